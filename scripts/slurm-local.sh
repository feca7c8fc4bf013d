#!/usr/bin/env bash
# slurm-local.sh — a single-node SLURM on localhost, to try `snakemake --profile slurm` on a workstation and to test
# the cluster path in CI (tests/cluster/). Debian/Ubuntu packages only; needs root; no systemd required.
#
#   sudo scripts/slurm-local.sh up [--with-dbd] [--gpus N]   install (apt) if needed, write configs, start daemons
#   sudo scripts/slurm-local.sh down                         cancel jobs, stop the daemons by their PID files
#   scripts/slurm-local.sh status                            daemons, partitions, node state (exit 1 if not up)
#
# What you get: node `localhost` (CPUs = nproc, RealMemory = 90% of MemTotal) in two partitions, `cpu` (default) and
# `gpu`, with N fake GPUs (default 1) backed by /dev/null character devices: jobs asking for `--gpus`/`--gres=gpu` are
# scheduled one per fake GPU and see CUDA_VISIBLE_DEVICES, but compute on the CPU. Nothing is enforced (no cgroups):
# memory and GPUs are bookkeeping only.
#
# Without --with-dbd there is no accounting: `sacct` fails, so Snakemake must use `--slurm-status-command squeue`
# (otherwise it waits forever after the first job). --with-dbd also installs MariaDB + slurmdbd (~25 s more) so
# `sacct` works and the plugin's defaults apply.
#
# Idempotent: `up` on a running cluster is a no-op (it restarts slurmctld/slurmd only if a config file changed, and
# resumes the node if it is drained). Daemons are stopped by PID file, never by name. Cluster state persists in
# /var/spool/slurmctld (job ids continue); delete it for a fresh cluster. Logs: /var/log/slurm/.
#
# Then, from the repo root:
#   snakemake --profile slurm --slurm-status-command squeue --slurm-init-seconds-before-status-checks 2
set -euo pipefail

CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
FAKE_GPU_DIR=/var/lib/fakegpu
CLUSTER=localcluster
NODE=localhost
PID_MUNGE=/run/munge/munged.pid
PID_MARIADB=/run/mysqld/mysqld.pid
PID_DBD=/run/slurmdbd.pid
PID_CTLD=/run/slurmctld.pid
PID_SLURMD=/run/slurmd.pid
DBD_PASS=slurmdbpass   # local MariaDB on 127.0.0.1 only

log() { printf '[slurm-local] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# Exit status 3 = SLURM cannot be installed/started here at all (not root, no apt, apt failed); tests skip on it
# locally and fail on CI. Any other failure is a bug worth seeing.
unavailable() { log "UNAVAILABLE: $*"; exit 3; }

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }

is_running() {  # PID file exists and names a live process
    local pidfile=$1 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

stop_pidfile() {  # SIGTERM, wait up to 10 s, then SIGKILL; remove the PID file
    local name=$1 pidfile=$2 pid i
    if ! is_running "$pidfile"; then
        rm -f "$pidfile"
        return 0
    fi
    pid=$(<"$pidfile")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name did not exit after 10 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2 i
    shift 2
    for ((i = 0; i < seconds * 5; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "timed out after ${seconds}s waiting for $what"
}

need_root() { [[ $(id -u) -eq 0 ]] || unavailable "must run as root (sudo $0 $*)"; }

install_packages() {
    local with_dbd=$1 pkgs=(slurmctld slurmd slurm-client munge)
    ((with_dbd)) && pkgs+=(slurmdbd mariadb-server)
    local missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || unavailable "apt-get not found: install ${missing[*]} with your package manager"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || unavailable "apt-get update failed"
    # Debian's postinst scripts try to start the daemons via invoke-rc.d; without systemd they are refused (harmless).
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || unavailable "apt-get install ${missing[*]} failed"
}

CHANGED=0
write_if_changed() {  # write_if_changed PATH MODE < content; sets CHANGED=1 when the file changes
    local path=$1 mode=$2 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -f $path ]] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"
    else
        install -D -m "$mode" "$tmp" "$path"
        rm -f "$tmp"
        CHANGED=1
        log "wrote $path"
    fi
}

write_configs() {
    local with_dbd=$1 gpus=$2 cpus mem_kb real_mem gres_file accounting
    cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # GNU nproc honours OMP_NUM_THREADS
    mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    real_mem=$((mem_kb * 9 / 10 / 1024))  # above what slurmd detects, the node drains
    if ((gpus == 1)); then
        gres_file=/dev/null
    else  # one character device per fake GPU (copies of /dev/null)
        install -d "$FAKE_GPU_DIR"
        for ((i = 0; i < gpus; i++)); do
            [[ -c $FAKE_GPU_DIR/gpu$i ]] || mknod "$FAKE_GPU_DIR/gpu$i" c 1 3
        done
        gres_file="$FAKE_GPU_DIR/gpu[0-$((gpus - 1))]"
    fi
    if ((with_dbd)); then
        accounting=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nAccountingStorageTRES=gres/gpu'
    else
        accounting='AccountingStorageType=accounting_storage/none'
    fi
    write_if_changed "$CONF_DIR/slurm.conf" 644 <<EOF
# written by scripts/slurm-local.sh (single node on localhost)
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
MinJobAge=300
SlurmctldPidFile=$PID_CTLD
SlurmdPidFile=$PID_SLURMD
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$accounting
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mem Gres=gpu:$gpus State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
    # A GPU GRES without a device file is dropped by slurmd and the node drains: File= must be a character device.
    write_if_changed "$CONF_DIR/gres.conf" 644 <<EOF
NodeName=$NODE Name=gpu File=$gres_file
EOF
    if ((with_dbd)); then
        write_if_changed "$CONF_DIR/slurmdbd.conf" 600 <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$PID_DBD
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBD_PASS
StorageLoc=slurm_acct_db
EOF
        chmod 600 "$CONF_DIR/slurmdbd.conf"
    fi
    install -d "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
}

start_munge() {
    is_running "$PID_MUNGE" && return 0
    [[ -s /etc/munge/munge.key ]] || {
        log "creating /etc/munge/munge.key"
        install -d -o munge -g munge -m 700 /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    }
    install -d -o munge -g munge /run/munge
    runuser -u munge -- /usr/sbin/munged
    wait_for 10 munged is_running "$PID_MUNGE"
}

start_dbd() {
    if ! is_running "$PID_MARIADB"; then
        install -d -o mysql -g mysql /run/mysqld
        setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 </dev/null >>"$LOG_DIR/mariadbd.log" 2>&1 &
        wait_for 30 mariadb mysqladmin ping
    fi
    mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBD_PASS';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
    if ! is_running "$PID_DBD"; then
        /usr/sbin/slurmdbd
        wait_for 30 slurmdbd sacctmgr -n list cluster
    fi
    sacctmgr -n list cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
}

node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1; }

node_ready() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }

cmd_up() {
    local with_dbd=0 gpus=1
    while (($#)); do
        case $1 in
            --with-dbd) with_dbd=1 ;;
            --gpus) gpus=${2:?--gpus needs a number}; shift ;;
            --gpus=*) gpus=${1#--gpus=} ;;
            *) die "unknown option for up: $1" ;;
        esac
        shift
    done
    [[ $gpus =~ ^[1-9][0-9]*$ ]] || die "--gpus must be a positive integer"
    need_root up
    local t0=$SECONDS
    install_packages "$with_dbd"
    CHANGED=0
    write_configs "$with_dbd" "$gpus"
    if ((CHANGED)); then  # slurmctld and slurmd must agree on slurm.conf: restart both (reconfigure is not enough)
        stop_pidfile slurmd "$PID_SLURMD"
        stop_pidfile slurmctld "$PID_CTLD"
    fi
    ((with_dbd)) || stop_pidfile slurmdbd "$PID_DBD"
    start_munge
    ((with_dbd)) && start_dbd
    if ! is_running "$PID_CTLD"; then
        /usr/sbin/slurmctld -i
        wait_for 30 slurmctld scontrol ping
    fi
    if ! is_running "$PID_SLURMD"; then
        /usr/sbin/slurmd -N "$NODE"  # -N: node name independent of the machine's hostname
    fi
    local i state
    for ((i = 0; i < 150; i++)); do
        node_ready && break
        state=$(node_state)
        # A drain survives restarts (kept in StateSaveLocation) and ReturnToService does not clear it.
        if [[ $state =~ drain|down|inval|fail ]] && ((i % 10 == 5)); then
            log "node is $state: resuming"
            scontrol update nodename="$NODE" state=resume 2>/dev/null || true
        fi
        sleep 0.2
    done
    node_ready || die "node $NODE not ready (state: $(node_state)); see $LOG_DIR/slurmctld.log and slurmd.log"
    log "up in $((SECONDS - t0))s: partitions cpu (default), gpu; $gpus fake GPU(s); accounting: $( ((with_dbd)) && echo slurmdbd || echo none)"
}

cmd_down() {
    need_root down
    if command -v squeue >/dev/null && is_running "$PID_CTLD"; then
        local jobs
        jobs=$(squeue -h -o %i 2>/dev/null || true)
        [[ -n $jobs ]] && { log "cancelling jobs: $(echo $jobs)"; scancel $jobs 2>/dev/null || true; }
    fi
    stop_pidfile slurmd "$PID_SLURMD"
    stop_pidfile slurmctld "$PID_CTLD"
    stop_pidfile slurmdbd "$PID_DBD"
    stop_pidfile mariadbd "$PID_MARIADB"
    stop_pidfile munged "$PID_MUNGE"
    log "down"
}

cmd_status() {
    local ok=0 name pidfile
    for name in munged:$PID_MUNGE slurmctld:$PID_CTLD slurmd:$PID_SLURMD slurmdbd:$PID_DBD mariadbd:$PID_MARIADB; do
        pidfile=${name#*:}
        if is_running "$pidfile"; then
            printf '%-10s running (pid %s)\n' "${name%%:*}" "$(<"$pidfile")"
        else
            printf '%-10s stopped\n' "${name%%:*}"
            [[ ${name%%:*} =~ ^(munged|slurmctld|slurmd)$ ]] && ok=1
        fi
    done
    if ((ok == 0)); then
        sinfo -o '%P %a %D %T %G' || ok=1
        node_ready || ok=1
    fi
    return $ok
}

main() {
    local cmd=${1:-}
    (($#)) && shift
    case $cmd in
        up) cmd_up "$@" ;;
        down) cmd_down ;;
        status) cmd_status ;;
        -h | --help | help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
