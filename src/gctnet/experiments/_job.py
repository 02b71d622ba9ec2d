"""One job of the ``--jobs`` launcher: ``python -m gctnet.experiments._job '{"config": {...}, "status": ...}'``.

Runs :func:`gctnet.experiments.runner.ensure_run` and exits 0 (finished), 130 (stopped by a signal
after saving ``last.pt``) or 1 (failed; the last line printed says why).
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    from ..errors import TrainingInterrupted
    from ..train import TrainConfig
    from .runner import ensure_run

    payload = json.loads(argv[0])
    config = TrainConfig.from_dict(payload["config"])
    try:
        ensure_run(config, payload["status"])
    except TrainingInterrupted as exc:
        print(f"interrupted: {exc}", flush=True)
        return 130
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - reported to the launcher by the last line
        import traceback

        traceback.print_exc()
        print(f"{type(exc).__name__}: {exc}".splitlines()[0], flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
