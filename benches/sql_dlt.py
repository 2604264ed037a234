"""The tool a user would pick instead for the pull in `benches/sql.rs`: dlt's sql_database
source (`sql_table`, its default backend) loading the same PostgreSQL table into DuckDB.
Prints `dlt <rows> <seconds> <peak RSS MiB>`."""

import resource
import sys
import time

import dlt
from dlt.sources.sql_database import sql_table

url, workdir = sys.argv[1], sys.argv[2]
started = time.monotonic()
pipeline = dlt.pipeline(
    pipeline_name="recsync_bench",
    destination=dlt.destinations.duckdb(f"{workdir}/dlt.duckdb"),
    dataset_name="legacy",
    pipelines_dir=f"{workdir}/dlt-pipelines",
)
info = pipeline.run(sql_table(credentials=url, table="customers"))
elapsed = time.monotonic() - started
rows = pipeline.last_trace.last_normalize_info.row_counts.get("customers", 0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print(f"dlt {rows} {elapsed:.3f} {peak:.1f}")
