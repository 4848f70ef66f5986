"""The report's out-of-distribution view: tables per selection rule and environment panels."""

import pytest

from richrep.report.html import ReportData, render_html
from richrep.report.ood_tables import ood_entries, ood_markdown, ood_table, save_ood_environments
from richrep.results import Row


def _row(col, kind, k, metric, value, alg, rule, env=None, seed=0, draw=0):
    return Row(
        run="r-0",
        entry="ood",
        protocol="ood",
        representation=kind,
        column=col,
        k=k,
        seeds=(seed,),
        dim=8 * k,
        params=100 * k,
        metric=metric,
        value=value,
        n=100,
        draw=draw,
        environment=env,
        variant=f"{alg} · {rule}",
    )


@pytest.fixture
def rows():
    out = []
    for col, kind, k, base in (("single", "single", 1, 0.2), ("cat2", "cat", 2, 0.6)):
        for alg, bonus in (("erm", 0.0), ("irm", 0.1)):
            for rule in ("train-domain", "oracle"):
                for seed in (0, 1):
                    v = base + bonus + 0.02 * seed
                    out.append(_row(col, kind, k, "worst_env_accuracy", v, alg, rule, seed=seed))
                    for env, d in (("test e=0.9", 0.0), ("test e=0.1", 0.3)):
                        out.append(_row(col, kind, k, "accuracy", v + d, alg, rule, env, seed))
    return out


def test_the_table_has_one_row_per_algorithm_and_rule_with_mean_and_interval(rows):
    assert ood_entries(rows) == ["ood"]
    comp = ood_table(rows, "ood")
    md = ood_markdown(comp, "train-domain")
    lines = md.splitlines()
    assert lines[0] == "| algorithm | single | cat2 |"
    # two seeds 2 points apart: std 1.4, 95% half-width t(0.975, 1) · 1.41 / √2 = 12.7
    assert lines[2] == "| erm | 21.0 ± 12.7 (n=2) | 61.0 ± 12.7 (n=2) |"
    assert lines[3] == "| irm | 31.0 ± 12.7 (n=2) | 71.0 ± 12.7 (n=2) |"
    assert len(lines) == 4  # the oracle rows are in the other table


def test_environment_panels_and_the_report_section(rows, tmp_path):
    path = save_ood_environments(rows, "ood", tmp_path / "ood.png")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"
    page = render_html(
        ReportData(
            name="x", run_id="x-0", rows=rows, entries=["ood"], entry_protocols={"ood": "ood"}
        ),
        tmp_path,
    )
    assert "Out of distribution" in page and "train-domain selection" in page
    assert not (tmp_path / "plots" / "worst_env_accuracy_vs_k-ood.png").exists()
