"""The report's figures: the cost-quality front (one panel per cost it is computed on) and the expected best dev
loss against the number of sweep trials. Methods are told apart by colour and a legend, never by labels that can
print on top of each other."""

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_figure(path: Path, rows: list[dict], costs: list[str], score: str) -> None:
    """Each cost against the score, one point per method with its 95% intervals; stars for the front's methods.
    A method missing a cost is left out of that panel, which names it. Axes start at zero: costs are positive."""
    plt = _pyplot()
    figure, panels = plt.subplots(1, len(costs), figsize=(5 * len(costs), 4), squeeze=False)
    for axes, cost in zip(panels[0], costs, strict=True):
        missing = []
        for colour, row in zip(_colours(len(rows)), rows, strict=True):
            x, y = row[f"{cost}_geometric_mean"], row[f"{score}_mean"]
            if x is None:
                missing.append(row["method"])
                continue
            optimal = row["pareto_optimal"] is True
            axes.errorbar(
                x, y, xerr=_error_bar(x, row[f"{cost}_low"], row[f"{cost}_high"]),
                yerr=_error_bar(y, row[f"{score}_low"], row[f"{score}_high"]), fmt="*" if optimal else "o",
                markersize=13 if optimal else 7, color=colour, capsize=3,
                label=f"{row['method']}{' (front)' if optimal else ''}",
            )  # fmt: skip
        drawn = [row for row in rows if row[f"{cost}_geometric_mean"] is not None]
        axes.set_xlim(0, 1.1 * max((row[f"{cost}_high"] for row in drawn), default=1.0))
        axes.set_ylim(0, 1.1 * max((row[f"{score}_high"] for row in drawn), default=1.0) or 1.0)
        axes.set(xlabel=f"{cost} (geometric mean, 95% interval)", ylabel=f"{score} (mean, 95% interval)")
        axes.set_title(f"missing {cost}: {', '.join(missing)}" if missing else f"{cost} vs {score}", fontsize=10)
        axes.legend(fontsize=8)
    figure.suptitle("Cost vs quality: the front is computed on every panel's cost at once")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def expected_best_figure(path: Path, curves: list[dict]) -> None:
    """Expected best dev loss against the number of trials, one line per method; whole trials on the x axis."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(6, 4))
    methods = list(dict.fromkeys(row["method"] for row in curves))
    for colour, method in zip(_colours(len(methods)), methods, strict=True):
        points = [(row["trials"], row["expected_best_dev_loss"]) for row in curves if row["method"] == method]
        axes.plot([n for n, _ in points], [v for _, v in points], marker="o", color=colour, label=method)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set(xlabel="sweep trials drawn from the grid", ylabel="expected best dev loss")
    axes.set_title("Expected best dev loss vs tuning trials")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _error_bar(center: float, low: float, high: float) -> list[list[float]]:
    return [[max(center - low, 0.0)], [max(high - center, 0.0)]]  # an interval's rounding never points backwards


def _colours(count: int) -> list[str]:
    return [f"C{i % 10}" for i in range(count)]  # matplotlib's own cycle of ten colours
