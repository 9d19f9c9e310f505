"""One progress-bar rule for every long loop of skfusion.

``show=None`` (the estimators' default) shows a tqdm bar on stderr once the work has
run for :data:`DELAY` seconds, so long work shows progress and short calls stay silent;
``True`` shows it at once and ``False`` never.
"""

__all__ = ["DELAY", "progress_bar"]

DELAY = 2.0


def progress_bar(total, show, desc, unit):
    """A tqdm bar over ``total`` steps following the ``show`` rule above."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        disable=show is False or total == 0,
        delay=DELAY if show is None else 0,
        desc=desc,
        unit=unit,
    )
