#!/bin/bash
# A one-node SLURM cluster on this machine, from Debian's packages, to try the cluster paths on a laptop
# (docs/scaling_out.md): munged, slurmctld and slurmd for this host, its cores as one node of partition `local`;
# no cgroup plugins (proctrack/linuxproc, task/none), so it runs in a VM or container too. As root.
#   apt-get install slurm-wlm munge        # once (Debian 12: SLURM 22.05)
#   scripts/local_slurm.sh start           # idempotent: a running cluster keeps its jobs, its config rewritten
#   scripts/local_slurm.sh status          # sinfo and the queue
#   scripts/local_slurm.sh stop            # the daemons stopped, the jobs with them
# Knobs (environment): LOCAL_SLURM_DIR (state, logs; default /tmp/icl-lr-slurm), LOCAL_SLURM_KILL_WAIT (seconds
# between a job's SIGTERM and its SIGKILL, SLURM's KillWait; default 30).
set -euo pipefail
dir="${LOCAL_SLURM_DIR:-/tmp/icl-lr-slurm}"
conf=/etc/slurm/slurm.conf
host="$(hostname -s)"

fail() { echo "local_slurm: $*" >&2; exit 1; }

running() { scontrol ping 2>/dev/null | grep -q "is UP"; }

write_conf() {
  local cpus memory
  cpus="$(nproc)"
  memory="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
  mkdir -p /etc/slurm "$dir/ctld" "$dir/d" "$dir/log"
  cat > "$conf" <<EOF
# Written by icl-lr's scripts/local_slurm.sh: one node, this host.
ClusterName=icl-lr-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=${LOCAL_SLURM_KILL_WAIT:-30}
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/d
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start_munge() {
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [[ -s /etc/munge/munge.key ]] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    if id munge >/dev/null 2>&1; then runuser -u munge -- /usr/sbin/munged; else /usr/sbin/munged --force; fi
    munge -n | unmunge >/dev/null || fail "munged does not answer (see /var/log/munge/munged.log)"
  fi
}

start() {
  [[ $EUID -eq 0 ]] || fail "start needs root (it writes $conf and starts the daemons)"
  command -v slurmctld >/dev/null || fail "no slurmctld: apt-get install slurm-wlm munge"
  if running; then  # up: its config brought to this call's (KillWait), the daemons told
    write_conf
    scontrol reconfigure
    echo "local_slurm: already up (KillWait ${LOCAL_SLURM_KILL_WAIT:-30} s)"
    return
  fi
  write_conf
  start_munge
  pgrep -x slurmctld >/dev/null || slurmctld -i
  pgrep -x slurmd >/dev/null || slurmd
  for _ in $(seq 60); do
    state="$(sinfo -h -n "$host" -o %t 2>/dev/null || true)"
    [[ "$state" == idle* || "$state" == mix* || "$state" == alloc* ]] && break
    [[ "$state" == down* || "$state" == drain* ]] && scontrol update nodename="$host" state=resume 2>/dev/null || true
    sleep 0.5
  done
  [[ "$state" == idle* || "$state" == mix* || "$state" == alloc* ]] ||
    fail "node $host is '${state:-unknown}' (logs: $dir/log/slurmctld.log, $dir/log/slurmd.log)"
  echo "local_slurm: up, node $host with $(nproc) CPUs in partition local (KillWait ${LOCAL_SLURM_KILL_WAIT:-30} s)"
}

stop() {
  scontrol shutdown >/dev/null 2>&1 || true
  for _ in $(seq 40); do pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break; sleep 0.25; done
  pkill -x slurmstepd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  pkill -x slurmd 2>/dev/null || true
  echo "local_slurm: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) running && { sinfo; squeue; } || { echo "local_slurm: not running"; exit 1; } ;;
  *) fail "usage: scripts/local_slurm.sh start|stop|status" ;;
esac
