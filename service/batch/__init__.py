"""Batch jobs: score and encode whole datasets with a model package, no HTTP (`python -m service.batch`).

A dataset is read as Arrow tables (service.batch.sources, or Ray Data's readers), every table goes through
one function (service.batch.core.Scorer: the service's runtime and data plane, so the numbers equal /score
and /encode), and the results are written as parts of a folder that appears only once complete
(service.batch.sinks). The local engine runs that function on this machine's cores, the Ray engine on an
actor pool of a Ray cluster; see docs/batch.md."""
