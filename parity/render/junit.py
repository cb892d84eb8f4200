"""JUnit XML: one testcase per output per link, plus one per failing layer (with --layers).

Every name and message goes through ``parity.core.escape.xml``, so the file parses whatever the
model's names hold (ESC, NUL-free control characters, U+FFFE, surrogates) and CI systems show
each name on one line.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from parity.core.escape import xml as esc
from parity.core.report import Report


def _fmt(x) -> str:
    from parity.core.metrics import fmt

    return "-" if x is None else fmt(x)


def render(report: Report) -> bytes:
    suites = ET.Element("testsuites", name="parity", tests="0", failures="0")
    total = failures = 0
    for comparison in report.comparisons:
        link = esc(comparison.link)
        runs = "".join(f"[{run}]" for run in (comparison.reference_run, comparison.candidate_run) if run)
        # each run of a model (target, precision, float or compressed) is its own class of tests
        classname = esc(f"parity.{comparison.reference}.{comparison.candidate}{runs}")
        suite = ET.SubElement(suites, "testsuite", name=f"parity {link}")
        cases = fails = 0
        for output in comparison.outputs:
            case = ET.SubElement(suite, "testcase", classname=classname, name=esc(f"output {output.name}"))
            cases += 1
            if not output.passed:
                fails += 1
                message = esc(output.error or (f"max_abs_diff {_fmt(output.max_abs_diff)}, "
                                               f"{(output.mismatch_fraction or 0):.2%} of elements out of tolerance"))
                failure = ET.SubElement(case, "failure", message=message, type="mismatch")
                failure.text = "\n".join([
                    f"{link}: output {esc(output.name)}: {message}",
                    f"alignment: {esc('; '.join(output.alignment) or 'none')}",
                    f"verdict: {esc(report.verdict.kind)}: {esc(report.verdict.summary)}",
                ])
        for layer in comparison.layers or ():
            if layer.passed:
                continue
            case = ET.SubElement(suite, "testcase", classname=f"{classname}.layers",
                                 name=esc(f"layer {layer.name} ({layer.op_type})"))
            cases += 1
            message = esc(f"scaled error {_fmt(layer.scaled_error)}, max_abs_diff {_fmt(layer.max_abs_diff)}, "
                          f"status {layer.status}")
            if comparison.passed and report.passed:
                # a layer-only finding: reported, but the outputs decide (--fail-on-layers)
                ET.SubElement(case, "system-out").text = f"layer-only finding: {message}"
                continue
            fails += 1
            ET.SubElement(case, "failure", message=message, type="layer")
        suite.set("tests", str(cases))
        suite.set("failures", str(fails))
        total += cases
        failures += fails
    suites.set("tests", str(total))
    suites.set("failures", str(failures))
    ET.indent(suites)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)


def render_sweep(report) -> bytes:
    """JUnit XML of a ``parity sweep`` (a ``sweep.SweepReport``): one testcase per model pair,
    failed with its verdict, or errored with its one-line error."""
    results = report.results
    failures = sum(1 for r in results if not r["passed"] and r["verdict"])
    errors = sum(1 for r in results if not r["passed"] and not r["verdict"])
    suite = ET.Element("testsuite", name=esc(f"parity sweep {report.target}"), tests=str(len(results)),
                       failures=str(failures), errors=str(errors),
                       time=f"{sum(r['seconds'] for r in results):.2f}")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname="parity.sweep", name=esc(r["name"]),
                             time=f"{r['seconds']:.2f}")
        if r["passed"]:
            continue
        verdict = r["verdict"] or {}
        if verdict:
            node = ET.SubElement(case, "failure", message=esc(f"{verdict.get('kind')}: {verdict.get('summary', '')}"[:2000]))
            node.text = esc("\n".join([f"exit {r['exit_code']}", f"where: {verdict.get('where') or '-'}",
                                       *[f"next: {step}" for step in verdict.get("next_steps", [])]]))
        else:
            node = ET.SubElement(case, "error", message=esc(str(r.get("error") or f"exit {r['exit_code']}")[:2000]))
    return ET.tostring(ET.ElementTree(suite).getroot(), encoding="utf-8", xml_declaration=True)
