# Sourced by the test and bench scripts: the mpirun flags this machine needs.
# Root needs --allow-run-as-root (CI runs as root); --oversubscribe allows more ranks than
# cores on small machines.
CT_MPIRUN_FLAGS=(--oversubscribe)
if [ "$(id -u)" -eq 0 ]; then CT_MPIRUN_FLAGS+=(--allow-run-as-root); fi
export OMPI_MCA_rmaps_base_oversubscribe=1
