#!/usr/bin/env bash
# Single-node SLURM cluster on this machine, for the slurm test and for developers.
#
#   scripts/slurm_cluster.sh start    # install (if needed), configure, start munged/slurmctld/slurmd, smoke-test
#   scripts/slurm_cluster.sh status   # exit 0 when the cluster answers and the node is usable
#   scripts/slurm_cluster.sh env      # prints `export SLURM_CONF=...` (eval it before sbatch/sinfo/snakemake)
#   scripts/slurm_cluster.sh stop     # stops only the daemons this script started (via their pid files)
#
# Every command is idempotent: `start` on a running cluster only re-checks it, `stop` on a stopped one
# does nothing.  Needs root (Debian/Ubuntu, no systemd required).
#
# Everything the script writes lives under $MULTIEXIT_SLURM_DIR (default /var/tmp/multiexit-slurm):
#   etc/slurm.conf, etc/gres.conf, state/, spool/, log/, run/*.pid.
# Nothing in /etc/slurm is touched.  Client commands find the cluster through SLURM_CONF, or, where
# SLURM_CONF is not set (inside jobs: the snakemake slurm plugin strips SLURM_* variables before its
# nested `srun`), through symlinks /run/slurm/conf/{slurm,gres}.conf, the path Slurm clients search
# after /etc/slurm/slurm.conf.  `stop` removes those symlinks again.
#
# Settings (environment variables):
#   MULTIEXIT_SLURM_DIR          where config, state, logs and pid files go
#   MULTIEXIT_SLURM_CTLD_PORT    slurmctld port (default 6817)
#   MULTIEXIT_SLURM_SLURMD_PORT  slurmd port (default 6818)
#   MULTIEXIT_SLURM_MIN_JOB_AGE  seconds a finished job stays visible to squeue (default 300; the snakemake
#                                slurm plugin needs >= 3x --slurm-init-seconds-before-status-checks)
#   MULTIEXIT_SLURM_GPUS         placeholder GPUs on the node (default: one per CPU).  They are empty files
#                                under $MULTIEXIT_SLURM_DIR/dev: jobs asking for GPUs get scheduled
#                                (CUDA_VISIBLE_DEVICES is set) but no device stands behind them.
#   MULTIEXIT_SLURM_NO_INSTALL=1 never call apt-get (fail instead when a package is missing)
set -euo pipefail

SLURM_HOME="${MULTIEXIT_SLURM_DIR:-/var/tmp/multiexit-slurm}"
CTLD_PORT="${MULTIEXIT_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${MULTIEXIT_SLURM_SLURMD_PORT:-6818}"
MIN_JOB_AGE="${MULTIEXIT_SLURM_MIN_JOB_AGE:-300}"
GPUS="${MULTIEXIT_SLURM_GPUS:-$(nproc)}"
NODE=localhost
PARTITIONS=(main gpu)  # the first is the default; both hold the one node

CONF_DIR="$SLURM_HOME/etc"
RUN_DIR="$SLURM_HOME/run"
LOG_DIR="$SLURM_HOME/log"
export SLURM_CONF="$CONF_DIR/slurm.conf"

MUNGE_PID="$RUN_DIR/munged.pid"          # written only when this script started munged
CTLD_PID="$RUN_DIR/slurmctld.pid"
SLURMD_PID="$RUN_DIR/slurmd.pid"

log() { printf '[slurm_cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pid_alive() {  # pid_alive <pidfile> [expected command name]
    local f="$1" pid
    [[ -s "$f" ]] || return 1
    pid="$(tr -dc '0-9' <"$f")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    if [[ $# -ge 2 ]]; then
        [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]] || return 1
    fi
}

wait_for() {  # wait_for <seconds> <description> <command...>
    local limit="$1" what="$2" i
    shift 2
    for ((i = 0; i < limit * 4; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.25
    done
    die "timed out after ${limit}s waiting for $what"
}

install_packages() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ "${MULTIEXIT_SLURM_NO_INSTALL:-0}" == 1 ]] && die "missing packages: ${missing[*]} (MULTIEXIT_SLURM_NO_INSTALL=1)"
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
    log "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >"$LOG_DIR/apt.log" 2>&1 || true
    apt-get install -y -q munge slurmctld slurmd slurm-client >>"$LOG_DIR/apt.log" 2>&1 \
        || die "apt-get install failed, see $LOG_DIR/apt.log"
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_works; then
        log "munged already answers"
        return 0
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        install -d -o munge -g munge -m 0700 /etc/munge
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    log "starting munged as user munge"
    # munged daemonizes and writes its pid file (readable by root) itself.
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    wait_for 20 "munged" munge_works
    cp /run/munge/munged.pid "$MUNGE_PID"
}

write_config() {
    local cpus mem_total real_mem def_mem
    cpus="$(nproc)"
    mem_total="$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)"  # MB, as `free -m` reports
    # Stay below the physical memory slurmd detects, or it drains the node ("Low RealMemory").
    real_mem=$((mem_total * 90 / 100))
    # A job that asks for no memory gets its share per CPU instead of the whole node.
    def_mem=$((real_mem / cpus))
    mkdir -p "$CONF_DIR" "$RUN_DIR" "$LOG_DIR" "$SLURM_HOME/state" "$SLURM_HOME/spool"
    # Placeholder GPUs: jobs that request gpu=N / --gpus=N / --gres=gpu:N are accepted and run (they see
    # CUDA_VISIBLE_DEVICES) but no device stands behind them.  Slurm wants a character device per GPU:
    # each is a node with /dev/null's numbers (1,3) under our dir; without mknod, /dev/null is the one GPU.
    mkdir -p "$SLURM_HOME/dev"
    local i ok=1
    for ((i = 0; i < GPUS; i++)); do
        [[ -c "$SLURM_HOME/dev/gpu$i" ]] || { rm -f "$SLURM_HOME/dev/gpu$i"; mknod -m 0666 "$SLURM_HOME/dev/gpu$i" c 1 3 2>/dev/null; } || { ok=0; break; }
    done
    if [[ $ok -eq 1 && $GPUS -gt 1 ]]; then
        echo "NodeName=$NODE Name=gpu File=$SLURM_HOME/dev/gpu[0-$((GPUS - 1))]" >"$CONF_DIR/gres.conf.tmp"
    elif [[ $ok -eq 1 ]]; then
        echo "NodeName=$NODE Name=gpu File=$SLURM_HOME/dev/gpu0" >"$CONF_DIR/gres.conf.tmp"
    else
        log "mknod failed: declaring a single placeholder GPU backed by /dev/null"
        GPUS=1
        echo "NodeName=$NODE Name=gpu File=/dev/null" >"$CONF_DIR/gres.conf.tmp"
    fi
    cat >"$CONF_DIR/slurm.conf.tmp" <<EOF
# Generated by scripts/slurm_cluster.sh ($(date -u +%Y-%m-%dT%H:%M:%SZ)); regenerated on every start.
ClusterName=multiexit
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$SLURM_HOME/state
SlurmdSpoolDir=$SLURM_HOME/spool
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=$MIN_JOB_AGE
DefMemPerCPU=$def_mem
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mem Gres=gpu:$GPUS State=UNKNOWN
# Two partitions on the same node, like a cluster's CPU and GPU partitions, so that the plugin's
# partition selection (--slurm-partition-config) can be exercised.
PartitionName=${PARTITIONS[0]} Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=${PARTITIONS[1]} Nodes=$NODE Default=NO MaxTime=INFINITE State=UP
EOF
    mv "$CONF_DIR/slurm.conf.tmp" "$CONF_DIR/slurm.conf"
    mv "$CONF_DIR/gres.conf.tmp" "$CONF_DIR/gres.conf"
}

RUN_CONF_DIR=/run/slurm/conf

link_run_conf() {
    if [[ -e /etc/slurm/slurm.conf ]]; then
        log "WARNING: /etc/slurm/slurm.conf exists and takes precedence over $RUN_CONF_DIR inside jobs;"
        log "         commands without SLURM_CONF (e.g. the plugin's srun inside a job) will talk to that cluster"
    fi
    mkdir -p "$RUN_CONF_DIR"
    local f
    for f in slurm.conf gres.conf; do
        if [[ -e "$RUN_CONF_DIR/$f" && ! -L "$RUN_CONF_DIR/$f" ]]; then
            die "$RUN_CONF_DIR/$f exists and is not ours; refusing to replace it"
        fi
        ln -sfn "$CONF_DIR/$f" "$RUN_CONF_DIR/$f"
    done
}

unlink_run_conf() {
    local f
    for f in slurm.conf gres.conf; do
        if [[ -L "$RUN_CONF_DIR/$f" && "$(readlink "$RUN_CONF_DIR/$f")" == "$CONF_DIR/$f" ]]; then
            rm -f "$RUN_CONF_DIR/$f"
        fi
    done
}

node_ready() { sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; }

cmd_start() {
    [[ $EUID -eq 0 ]] || die "must run as root"
    local t0=$SECONDS
    mkdir -p "$LOG_DIR" "$RUN_DIR"
    install_packages
    start_munge
    if pid_alive "$CTLD_PID" slurmctld && pid_alive "$SLURMD_PID" slurmd; then
        log "slurmctld and slurmd already running"
        link_run_conf
    else
        if ! pid_alive "$CTLD_PID" slurmctld && ! pid_alive "$SLURMD_PID" slurmd; then
            write_config
        fi
        link_run_conf
        if ! pid_alive "$CTLD_PID" slurmctld; then
            log "starting slurmctld"
            /usr/sbin/slurmctld -f "$SLURM_CONF"
            wait_for 30 "slurmctld to answer" scontrol ping
        fi
        if ! pid_alive "$SLURMD_PID" slurmd; then
            log "starting slurmd -N $NODE"
            /usr/sbin/slurmd -f "$SLURM_CONF" -N "$NODE"
        fi
    fi
    if ! wait_for_node 60; then
        # A node that was drained earlier (e.g. by a killed job) is put back into service once.
        scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
        wait_for_node 30 || { sinfo -N -l >&2 || true; die "node $NODE did not become idle; see $LOG_DIR"; }
    fi
    local out
    out="$(srun -N1 -n1 -t 1 bash -c 'echo "job=$SLURM_JOB_ID"')" || die "srun smoke test failed; see $LOG_DIR"
    [[ "$out" == job=[0-9]* ]] || die "srun smoke test printed '$out'"
    log "cluster up in $((SECONDS - t0))s (smoke test $out); use: export SLURM_CONF=$SLURM_CONF"
}

wait_for_node() {
    local limit="$1" i
    for ((i = 0; i < limit * 4; i++)); do
        node_ready && return 0
        sleep 0.25
    done
    return 1
}

stop_pidfile() {  # stop_pidfile <pidfile> <comm>
    local f="$1" name="$2" pid i
    if ! pid_alive "$f" "$name"; then
        rm -f "$f"
        return 0
    fi
    pid="$(tr -dc '0-9' <"$f")"
    log "stopping $name (pid $pid)"
    kill -TERM "$pid"
    for ((i = 0; i < 80; i++)); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$f"; return 0; }
        sleep 0.25
    done
    log "$name did not stop in 20s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
}

cmd_stop() {
    # slurmstepd processes of running jobs belong to slurmd's jobs; cancel them first.
    if pid_alive "$CTLD_PID" slurmctld; then
        local p
        for p in "${PARTITIONS[@]}"; do scancel --full --partition="$p" >/dev/null 2>&1 || true; done
    fi
    stop_pidfile "$SLURMD_PID" slurmd
    stop_pidfile "$CTLD_PID" slurmctld
    # munged is stopped only if this script started it (its copy of the pid file exists).
    stop_pidfile "$MUNGE_PID" munged
    unlink_run_conf
    log "stopped"
}

cmd_status() {
    local ok=0
    if pid_alive "$CTLD_PID" slurmctld; then log "slurmctld running (pid $(cat "$CTLD_PID"))"; else log "slurmctld not running"; ok=1; fi
    if pid_alive "$SLURMD_PID" slurmd; then log "slurmd running (pid $(cat "$SLURMD_PID"))"; else log "slurmd not running"; ok=1; fi
    if munge_works; then log "munge works"; else log "munge does not answer"; ok=1; fi
    if [[ $ok -eq 0 ]]; then
        sinfo -N -o '%N %T %c %m %G' >&2 || ok=1
        node_ready || { log "node $NODE not ready"; ok=1; }
    fi
    echo "SLURM_CONF=$SLURM_CONF"
    return $ok
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    restart) cmd_stop; cmd_start ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    *) echo "usage: $0 {start|stop|status|restart|env}" >&2; exit 2 ;;
esac
