// skfusion search page: tokenize (transformers.js), embed each member and run the
// head (onnxruntime-web, wasm), then rank the corpus codes -- all from local files.
// Scores are similarities in [-1, 1], as skfusion.onnx.ExportedPipeline.search gives:
// codes: cosine of the code vectors; LSH bits: 1 - 2 * hamming / n_bits; floats: cosine.
import * as ort from "./vendor/ort.wasm.min.mjs";
import { AutoTokenizer, env } from "./vendor/transformers.min.js";

const here = new URL(".", location.href).href;
env.allowRemoteModels = false; // never fetch from the Hugging Face Hub
env.allowLocalModels = true;
env.localModelPath = "members/"; // relative: an absolute URL would count as remote
env.useBrowserCache = false;
ort.env.wasm.wasmPaths = here + "vendor/";
ort.env.wasm.numThreads = 1; // a plain static server gives no cross-origin isolation

const $ = (id) => document.getElementById(id);

async function fetchOk(path) {
  const response = await fetch(path);
  if (!response.ok) throw new Error(`cannot load ${path}: HTTP ${response.status}`);
  return response;
}
const getJson = async (path) => (await fetchOk(path)).json();
const getBytes = async (path) => new Uint8Array(await (await fetchOk(path)).arrayBuffer());

// Codes packed one after the other, widths[j] bits each, most significant bit first.
function unpackInto(bytes, offset, widths, out) {
  let bit = offset * 8;
  for (let j = 0; j < widths.length; j++) {
    let code = 0;
    for (let b = 0; b < widths[j]; b++, bit++) {
      code = (code << 1) | ((bytes[bit >> 3] >> (7 - (bit & 7))) & 1);
    }
    out[j] = code;
  }
}

const POPCOUNT = new Uint8Array(256).map((_, i) => {
  let c = 0;
  for (let v = i; v; v >>= 1) c += v & 1;
  return c;
});

function l2normalize(v) {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i] * v[i];
  const n = Math.fround(Math.sqrt(s));
  if (n > 0) for (let i = 0; i < v.length; i++) v[i] = v[i] / n;
  return v;
}

async function load() {
  const cfg = await getJson("skfusion.json");
  const members = [];
  for (const m of cfg.members) {
    const tokenizer = await AutoTokenizer.from_pretrained(m.path);
    const session = await ort.InferenceSession.create(`members/${m.path}/model.onnx`, {
      executionProviders: ["wasm"],
    });
    members.push({ ...m, tokenizer, session });
  }
  const head = await ort.InferenceSession.create(cfg.head.file, { executionProviders: ["wasm"] });
  const corpus = cfg.corpus;
  const raw = await getBytes(corpus.file);
  const ids = await getJson(corpus.ids_file);
  const texts = await getJson(corpus.texts_file);
  const h = cfg.head;
  let docs = null, table = null;
  if (h.output === "codes") {
    // Each document as the float values its codes stand for (what Python's search
    // scores with): table[j][code], L2-normalised so that a dot product is a cosine.
    table = new Float32Array((await getBytes(h.table_file)).buffer);
    const d = h.widths.length;
    docs = new Float32Array(corpus.n * d);
    const codes = new Uint8Array(d);
    for (let i = 0; i < corpus.n; i++) {
      unpackInto(raw, i * corpus.row_bytes, h.widths, codes);
      for (let j = 0; j < d; j++) docs[i * d + j] = table[j * h.table_stride + codes[j]];
      l2normalize(docs.subarray(i * d, (i + 1) * d));
    }
  } else if (h.output === "cosine") {
    docs = new Float32Array(raw.buffer);
    for (let i = 0; i < corpus.n; i++) l2normalize(docs.subarray(i * h.width, (i + 1) * h.width));
  } else {
    docs = raw; // packed sign bits
  }
  return { cfg, members, head, ids, texts, docs, table };
}

async function embedText(state, text) {
  const { cfg, members } = state;
  const x = new Float32Array(cfg.n_features);
  let offset = 0;
  for (const m of members) {
    const enc = m.tokenizer(m.prompt + text, {
      add_special_tokens: m.add_special_tokens,
      truncation: m.max_length !== null,
      max_length: m.max_length ?? undefined,
    });
    let ids = BigInt64Array.from(enc.input_ids.data);
    let mask = BigInt64Array.from(enc.attention_mask.data);
    if (ids.length === 0) { // a text with no token: one masked pad
      ids = new BigInt64Array(1);
      mask = new BigInt64Array(1);
    }
    const out = await m.session.run({
      input_ids: new ort.Tensor("int64", ids, [1, ids.length]),
      attention_mask: new ort.Tensor("int64", mask, [1, mask.length]),
    });
    const v = Float32Array.from(out.sentence_embedding.data);
    if (cfg.normalize) l2normalize(v);
    for (let i = 0; i < v.length; i++) x[offset + i] = Math.fround(v[i] * m.weight);
    offset += v.length;
  }
  return x;
}

function topK(scores, k) {
  const order = Array.from(scores.keys());
  order.sort((a, b) => scores[b] - scores[a] || a - b); // ties: lower index first
  return order.slice(0, k);
}

function rank(state, q) {
  const { cfg, docs, table } = state;
  const h = cfg.head, n = cfg.corpus.n;
  const scores = new Float64Array(n);
  if (h.output === "codes") {
    const d = h.widths.length;
    const codes = new Uint8Array(d);
    if (h.packed) unpackInto(q, 0, h.widths, codes);
    else codes.set(q);
    const qv = new Float32Array(d);
    for (let j = 0; j < d; j++) qv[j] = table[j * h.table_stride + codes[j]];
    l2normalize(qv);
    for (let i = 0; i < n; i++) {
      let s = 0;
      for (let j = 0, o = i * d; j < d; j++) s += qv[j] * docs[o + j];
      scores[i] = s;
    }
  } else if (h.output === "hamming") {
    let bytes = q;
    if (!h.packed) { // unpacked bits: pack them like the corpus rows
      bytes = new Uint8Array(cfg.corpus.row_bytes);
      for (let b = 0; b < q.length; b++) if (q[b]) bytes[b >> 3] |= 128 >> (b & 7);
    }
    const w = cfg.corpus.row_bytes;
    for (let i = 0; i < n; i++) {
      let diff = 0;
      for (let j = 0; j < w; j++) diff += POPCOUNT[bytes[j] ^ docs[i * w + j]];
      scores[i] = 1 - (2 * diff) / h.n_bits;
    }
  } else {
    const v = l2normalize(Float32Array.from(q));
    for (let i = 0; i < n; i++) {
      let s = 0;
      for (let j = 0, o = i * h.width; j < h.width; j++) s += v[j] * docs[o + j];
      scores[i] = s;
    }
  }
  const top = topK(scores, Math.min(10, n));
  return { top, scores: top.map((i) => scores[i]) };
}

async function query(state, text) {
  if (!text.trim()) { // nothing to search for: no results (not 10 arbitrary ones)
    const ms = { embed: 0, head: 0, search: 0, total: 0 };
    return { codes: [], top: [], ids: [], scores: [], ms, empty: true };
  }
  const t0 = performance.now();
  const x = await embedText(state, text);
  const t1 = performance.now();
  const out = await state.head.run({ X: new ort.Tensor("float32", x, [1, x.length]) });
  const q = out[state.head.outputNames[0]].data;
  const t2 = performance.now();
  const { top, scores } = rank(state, q);
  const t3 = performance.now();
  return {
    codes: Array.from(q, Number),
    top,
    ids: top.map((i) => state.ids[i]),
    scores,
    ms: { embed: t1 - t0, head: t2 - t1, search: t3 - t2, total: t3 - t0 },
  };
}

function render(state, result) {
  const list = $("results");
  list.replaceChildren();
  result.top.forEach((i, r) => {
    const li = document.createElement("li");
    const id = document.createElement("span");
    id.className = "id";
    id.textContent = state.ids[i];
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = result.scores[r].toFixed(3);
    score.title = `similarity (${state.cfg.head.score}), in [-1, 1]`;
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = state.texts[i];
    li.append(id, score, text);
    list.append(li);
  });
  if (result.empty) {
    $("status").textContent = "";
    return;
  }
  $("status").textContent = `top ${result.top.length} of ${state.cfg.corpus.n} in ` +
    `${result.ms.total.toFixed(1)} ms (encode ${result.ms.embed.toFixed(1)}, head ` +
    `${result.ms.head.toFixed(1)}, search ${result.ms.search.toFixed(1)})`;
}

const ready = load().then((state) => {
  const names = state.members.map((m) => m.name).join(" + ");
  $("about").textContent = `${state.cfg.corpus.n} documents · members: ${names} · ` +
    `${state.cfg.head.description} · runs in this browser (onnxruntime-web)`;
  $("query").disabled = false;
  $("go").disabled = false;
  $("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    render(state, await query(state, $("query").value));
  });
  window.skfusion = { query: (text) => query(state, text), config: state.cfg };
  return state;
}).catch((error) => {
  $("about").textContent = `Error: ${error.message}`;
  window.skfusionError = String(error.stack || error);
  throw error;
});
window.skfusionReady = ready.then(() => true, () => false);
