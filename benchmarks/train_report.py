"""What a metrics-only ``ray.train.report`` costs a Ray Train V2 worker.

    python benchmarks/train_report.py                  # 20 steps of 50 ms per arm, one worker
    python benchmarks/train_report.py --steps 40 --step-ms 100

Two arms, one after the other on the same local Ray, each a ``TorchTrainer`` with one worker
whose loop does ``--steps`` steps of ``--step-ms`` of sleep (standing in for compute):

* ``no-report``: the loop alone;
* ``report``: the same loop with ``ray.train.report({"step": i})`` after every step.

Prints the loop's wall time in each arm (measured inside the worker, so the start-up of the run is
not counted), the ratio, and the cost per report. Ray Train V2 puts a report on a queue that the
controller drains when it polls the workers (every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, 2 s by
default), and keeps no metrics-only reports; this is why the shared training loop
(``galeno.train.loop.fit``) reports only evaluations and checkpoints to Ray.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time


def _loop(config: dict) -> None:
    import ray.train

    t0 = time.perf_counter()
    for i in range(config["steps"]):
        time.sleep(config["step_ms"] / 1000)
        if config["report"]:
            ray.train.report({"step": i})
    seconds = time.perf_counter() - t0
    if ray.train.get_context().get_world_rank() == 0:
        with open(config["out"], "w") as f:
            json.dump({"seconds": seconds}, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step-ms", type=float, default=50.0)
    args = parser.parse_args()

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results = {}
    with tempfile.TemporaryDirectory(prefix="galeno-bench-report-") as tmp:
        for arm, report in (("no-report", False), ("report", True)):
            out = f"{tmp}/{arm}.json"
            TorchTrainer(_loop, train_loop_config={"steps": args.steps, "step_ms": args.step_ms, "report": report,
                                                   "out": out},
                         scaling_config=ScalingConfig(num_workers=1),
                         run_config=RunConfig(storage_path=f"{tmp}/ray", name=arm)).fit()
            with open(out) as f:
                results[arm] = json.load(f)["seconds"]
    ray.shutdown()
    base, with_reports = results["no-report"], results["report"]
    print(f"ray {ray.__version__}, {args.steps} steps of {args.step_ms:.0f} ms, one worker")
    print(f"{'arm':<10} {'loop s':>8}")
    for arm, seconds in results.items():
        print(f"{arm:<10} {seconds:>8.2f}")
    print(f"report / no-report: {with_reports / base:.1f}x; "
          f"{(with_reports - base) / args.steps:.2f} s per metrics-only report")


if __name__ == "__main__":
    main()
