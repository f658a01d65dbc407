#!/usr/bin/env bash
# A real Slurm on one machine for tests and demos: munge, MariaDB + slurmdbd (submitit polls sacct:
# without accounting a cancelled job never completes for it), slurmctld, and two compute nodes
# (zs-node1, zs-node2: two slurmd, each with its own name, address, port and 2 fake GPUs), so that a
# job can span nodes. Each node has this machine's cores and half its memory.
#   launchers/local-slurm.sh start|stop|status
# State, configs and logs live in $ZEROSWEEP_SLURM_DIR (default /tmp/zerosweep-slurm); clients
# find the config through /etc/slurm/slurm.conf (linked when absent) or SLURM_CONF=$DIR/etc/slurm.conf.
# The node names resolve through /etc/hosts (127.0.0.11, .12): a job's ranks meet at its first node.
# MaxArraySize is 3 here (clusters allow 1001 or more): a sweep of 4 points goes out as two arrays.
# Needs root and Debian's slurmctld slurmd slurm-client slurmdbd munge mariadb-server
# (scripts/system-deps.sh). No systemd: the daemons are started directly.
set -euo pipefail

DIR=${ZEROSWEEP_SLURM_DIR:-/tmp/zerosweep-slurm}
ETC=$DIR/etc
export SLURM_CONF=$ETC/slurm.conf
DB_PORT=${ZEROSWEEP_SLURM_DB_PORT:-3307}
HOST=$(hostname -s)
NODES=(zs-node1 zs-node2)

log() { echo "local-slurm: $*" >&2; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_configs() {
    mkdir -p "$ETC" "$DIR"/{log,spool/ctld,gpu,run}
    local hardware memory node_lines="" gres="AutoDetect=off" i
    # This machine's cores; half its memory per node (a RealMemory above the detected one drains a node).
    hardware=$(slurmd -C | head -1 | grep -o 'CPUs=.*ThreadsPerCore=[0-9]*')
    memory=$(( $(slurmd -C | head -1 | grep -o 'RealMemory=[0-9]*' | cut -d= -f2) / 2 ))
    for i in "${!NODES[@]}"; do
        node_lines+="NodeName=${NODES[$i]} NodeHostname=${NODES[$i]} NodeAddr=127.0.0.$((11 + i)) Port=$((6821 + i)) $hardware RealMemory=$memory Gres=gpu:2 State=UNKNOWN"$'\n'
        gres+=$'\n'"NodeName=${NODES[$i]} Name=gpu File=$DIR/gpu/nvidia[$((2 * i))-$((2 * i + 1))]"
        grep -qE "^127\.0\.0\.$((11 + i))[[:space:]]+${NODES[$i]}\$" /etc/hosts ||
            echo "127.0.0.$((11 + i)) ${NODES[$i]}" >>/etc/hosts
    done
    for i in 0 1 2 3; do   # character devices: Slurm then sets CUDA_VISIBLE_DEVICES per job
        [ -c "$DIR/gpu/nvidia$i" ] || { rm -f "$DIR/gpu/nvidia$i"; mknod "$DIR/gpu/nvidia$i" c 195 "$i"; }
    done
    cat >"$ETC/slurm.conf" <<EOF
ClusterName=zerosweep
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d-%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
EnforcePartLimits=ALL
SchedulerParameters=bf_interval=1,sched_interval=1
KillWait=5
ReturnToService=2
MaxArraySize=3
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
${node_lines}PartitionName=debug Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP
EOF
    echo "$gres" >"$ETC/gres.conf"
    cat >"$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$ETC/slurmdbd.conf"
    # Clients (sbatch, sacct, submitit) read /etc/slurm/slurm.conf: point it here unless a real one exists.
    if [ ! -e /etc/slurm/slurm.conf ] || [ "$(readlink /etc/slurm/slurm.conf)" = "$ETC/slurm.conf" ]; then
        mkdir -p /etc/slurm && ln -sfn "$ETC/slurm.conf" /etc/slurm/slurm.conf
    else
        log "/etc/slurm/slurm.conf exists: use SLURM_CONF=$ETC/slurm.conf with sbatch/sacct"
    fi
}

start_munge() {
    mkdir -p /run/munge && chown munge:munge /run/munge
    alive /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged
}

start_mariadb() {
    alive "$DIR/run/mysqld.pid" && return
    local fresh=0
    [ -d "$DIR/mysql/mysql" ] || { fresh=1; mariadb-install-db --user=root --datadir="$DIR/mysql" >"$DIR/log/mariadb-install.log" 2>&1; }
    mkdir -p /run/mysqld
    mysqld --user=root --datadir="$DIR/mysql" --socket="$DIR/run/mysqld.sock" --pid-file="$DIR/run/mysqld.pid" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --log-error="$DIR/log/mariadb.log" >/dev/null 2>&1 &
    for _ in $(seq 100); do [ -S "$DIR/run/mysqld.sock" ] && break; sleep 0.2; done
    [ $fresh = 0 ] && return
    mariadb --socket="$DIR/run/mysqld.sock" -u root <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

start_slurm() {
    alive "$DIR/run/slurmdbd.pid" || slurmdbd
    for _ in $(seq 50); do sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 0.2; done
    sacctmgr -n show cluster format=cluster | grep -qw zerosweep || sacctmgr -i add cluster zerosweep >/dev/null
    alive "$DIR/run/slurmctld.pid" || slurmctld
    local node
    for node in "${NODES[@]}"; do alive "$DIR/run/slurmd-$node.pid" || slurmd -N "$node"; done
    for _ in $(seq 100); do
        [ "$(sinfo -h -N -o %t 2>/dev/null | grep -cE '^(idle|mix|alloc)')" = "${#NODES[@]}" ] && return
        sleep 0.2
    done
    log "nodes not idle after 20 s; see $DIR/log"; sinfo >&2 || true; exit 1
}

stop_pid() {
    alive "$1" || return 0
    local pid; pid=$(cat "$1"); kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
}

case ${1:-} in
start)
    write_configs
    start_munge
    start_mariadb
    start_slurm
    log "up: $(sinfo -h -o '%P %D nodes %t %G' | head -1) (SLURM_CONF=$SLURM_CONF)"
    ;;
stop)
    if alive "$DIR/run/slurmctld.pid"; then
        # Jobs first: leftover job steps ignore SIGTERM and clash with job ids restarting at 1.
        scancel --full --quiet --user="$(id -un)" || true
        for _ in $(seq 75); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
    fi
    for d in "${NODES[@]/#/slurmd-}" slurmctld slurmdbd mysqld; do stop_pid "$DIR/run/$d.pid"; done
    log "stopped (state kept in $DIR)"
    ;;
status)
    for d in mysqld slurmdbd slurmctld "${NODES[@]/#/slurmd-}"; do
        if alive "$DIR/run/$d.pid"; then echo "$d: running"; else echo "$d: stopped"; fi
    done
    alive "$DIR/run/slurmctld.pid" && sinfo && squeue
    ;;
*)
    echo "usage: $0 start|stop|status" >&2; exit 2
    ;;
esac
