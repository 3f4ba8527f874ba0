"""A failed lab test explains itself: its report names the results folder and quotes the ipsecd counters
that moved during the test; the folder holds each node's ipsecctl views."""

import os
import re

pytest_plugins = ["pytester"]

FAILING_TEST = '''
def test_fails_after_secured_traffic(lab_up):
    lab = lab_up("intranet-pair")
    lab.node("host-a").exec(["ping", "-c2", "-W5", "host-b"], check=True)
    assert False, "planted failure"
'''


def test_failure_names_results_folder_counters_and_saves_ipsecctl_views(pytester, lab_backend, tmp_path):
    pytester.makepyfile(test_planted=FAILING_TEST)
    results = tmp_path / "results"
    prefix = f"{os.environ.get('LAB_PREFIX', 't')}i"  # not the outer run's labs
    env = {"LAB_RESULTS": str(results), "LAB_RUN": "run", "LAB_PREFIX": prefix}
    for key, value in env.items():
        pytester._monkeypatch.setenv(key, value)
    outcome = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    outcome.assert_outcomes(failed=1)
    report = outcome.stdout.str()
    folder = results / "run" / "test_planted" / "test_fails_after_secured_traffic"
    assert "lab results" in report and str(folder) in report, report
    assert "ipsecd counters changed during the test" in report
    assert re.search(r"host-a: Confidential Bytes Sent 0 -> [1-9]", report), report
    state = next(folder.glob("*-host-a.state.txt")).read_text()
    for view in ("stats", "sa", "mmsa", "qmsa", "events"):
        assert f"== ipsecctl {view}\n" in state
    assert "ESP[3DES,SHA1]" in state
