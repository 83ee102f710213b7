"""Run embed_recordings for one partition in this process, on a throwaway Dagster instance, and print the
outcome as JSON. The reliability tests start it as a subprocess so they can kill -9 it or pull the
database from under it. Usage: python -m embed_assets_tests.support.run_partition KEY [RUN_CONFIG_JSON]"""

import json
import sys

import dagster as dg

from embed_assets.definitions import defs


def main() -> None:
    key = sys.argv[1]
    run_config = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("recordings", [key])
        result = defs.resolve_job_def("embed_recordings").execute_in_process(
            instance=instance, partition_key=key, run_config=run_config, raise_on_error=False
        )
        failures = [e.step_failure_data.error.to_string() for e in result.all_events if e.is_step_failure]
        restarts = sum(1 for e in result.all_events if e.event_type_value == "STEP_RESTARTED")
        print(json.dumps({"success": result.success, "failures": failures, "restarts": restarts}), flush=True)


if __name__ == "__main__":
    main()
