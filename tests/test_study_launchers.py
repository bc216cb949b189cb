"""The study's local launcher: N jobs at once, each on its own GPU slot, each ending reported with its exit code;
told to stop, it starts no more and stops those running."""

import sys
import time

from shared.study.launchers import Job, run_local

# Prints its GPU, its name and when it started and ended; sleeps long enough for two jobs to overlap.
JOB = (
    "import os, sys, time; start = time.time(); time.sleep(1); "
    "print(os.environ['CUDA_VISIBLE_DEVICES'], os.environ['JOB'], start, time.time()); sys.exit(int(os.environ['JOB']))"
)


def test_local_jobs_run_n_at_once_spread_over_the_visible_gpus_and_report_their_exit_codes(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    jobs = [
        Job(f"job{i}", (sys.executable, "-c", JOB), tmp_path / "logs" / f"job{i}.log", {"JOB": str(i)})
        for i in range(4)
    ]
    ended = []
    run_local(jobs, "sweep", lambda job, code: ended.append((job.name, code)) or True, parallel=2)
    assert sorted(ended) == [("job0", 0), ("job1", 1), ("job2", 2), ("job3", 3)]

    seen = {job.name: job.log_file.read_text().split() for job in jobs}
    assert {name: words[1] for name, words in seen.items()} == {f"job{i}": str(i) for i in range(4)}
    spans = {name: (float(words[2]), float(words[3])) for name, words in seen.items()}
    moments = sorted(t for start, end in spans.values() for t in (start, end))
    at_once = max(sum(start <= t < end for start, end in spans.values()) for t in moments)
    assert at_once == 2, "two jobs side by side, never three"
    overlapping = [
        (a, b) for a in spans for b in spans if a < b and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]
    ]
    assert overlapping and all(seen[a][0] != seen[b][0] for a, b in overlapping), "jobs side by side get other GPUs"
    assert {words[0] for words in seen.values()} == {"3", "5"}


# Stops on SIGTERM as a training does (exit 75); the first job ends once the second has said it runs.
STOPPABLE = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: (print('stopping', flush=True), sys.exit(75)));"
    " print('running', flush=True); time.sleep(60)"
)
FIRST = "import pathlib, sys, time\nwhile 'running' not in pathlib.Path(sys.argv[1]).read_text(): time.sleep(0.05)"


def test_told_to_stop_the_launcher_starts_no_more_jobs_and_stops_those_running(tmp_path):
    logs = [tmp_path / f"job{i}.log" for i in range(3)]
    logs[1].write_text("")
    jobs = [
        Job("job0", (sys.executable, "-c", FIRST, str(logs[1])), logs[0]),
        Job("job1", (sys.executable, "-c", STOPPABLE), logs[1]),
        Job("job2", (sys.executable, "-c", STOPPABLE), logs[2]),
    ]
    ended, start = [], time.monotonic()
    run_local(jobs, "sweep", lambda job, code: ended.append(job.name) or False, parallel=2)
    assert ended == ["job0"], "a job the launcher stopped is not reported as ended"
    assert logs[1].read_text().split() == ["running", "stopping"], "the running job got SIGTERM"
    assert not logs[2].exists(), "no job starts once told to stop"
    assert time.monotonic() - start < 30
