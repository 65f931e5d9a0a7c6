#!/bin/bash
# A one-node SLURM cluster on this machine, from Debian's packages, to try the cluster paths on a laptop
# (docs/scaling_out.md): munged, slurmctld and slurmd for this host, its cores as one node of partition `local`;
# no cgroup plugins (proctrack/linuxproc, task/none), so it runs in a VM or container too. As root.
#   apt-get install slurm-wlm munge        # once (Debian 12: SLURM 22.05)
#   scripts/local_slurm.sh start           # idempotent: a running cluster keeps its jobs, its config rewritten
#   eval "$(scripts/local_slurm.sh env)"   # export SLURM_CONF=<state dir>/slurm.conf: sbatch, srun, sinfo to it
#   scripts/local_slurm.sh status          # sinfo and the queue
#   scripts/local_slurm.sh stop            # its jobs cancelled, the daemons it started stopped
# The cluster lives in its state dir: its config is <state dir>/slurm.conf (never /etc/slurm, which it never
# writes), every daemon and client of it runs with SLURM_CONF set to that file, and its controller listens on its
# own ports (6917, 6918), not SLURM's defaults. It never touches a SLURM it did not start: `start` refuses, in one
# line and exit code 1, where another cluster is configured or running: a system config not written by this script
# (/etc/slurm/slurm.conf), a slurmctld or slurmd process that is not the one in its pid files, or SLURM_CONF set
# to another file. `start --force` (or LOCAL_SLURM_FORCE=1) starts it anyway, beside the other (they share
# nothing but munged). A running munged is reused; one is started only where none answers, and then recorded
# (<state dir>/munge/munged.pid). `stop` stops only what its pid files name (slurmctld, slurmd, and munged if it
# started it), SIGTERM then SIGKILL after LOCAL_SLURM_STOP_WAIT seconds (default 20); it never kills by name.
# Knobs (environment): LOCAL_SLURM_DIR (state, config, logs; default /tmp/icl-lr-slurm), LOCAL_SLURM_KILL_WAIT
# (seconds between a job's SIGTERM and its SIGKILL, SLURM's KillWait; default 30), LOCAL_SLURM_FORCE,
# LOCAL_SLURM_STOP_WAIT, LOCAL_SLURM_PORT (the controller's port, the node's the next; default 6917),
# LOCAL_SLURM_SYSTEM_CONF (the system config that counts as another cluster; default /etc/slurm/slurm.conf).
set -euo pipefail
dir="${LOCAL_SLURM_DIR:-/tmp/icl-lr-slurm}"
dir="$(realpath -m "$dir")"
conf="$dir/slurm.conf"
system_conf="${LOCAL_SLURM_SYSTEM_CONF:-/etc/slurm/slurm.conf}"
port="${LOCAL_SLURM_PORT:-6917}"
stop_wait="${LOCAL_SLURM_STOP_WAIT:-20}"
force="${LOCAL_SLURM_FORCE:-0}"
marker="# Written by icl-lr's scripts/local_slurm.sh"
host="$(hostname -s)"
outer_conf="${SLURM_CONF:-}"
export SLURM_CONF="$conf"  # every client and daemon below: this cluster's

fail() { echo "local_slurm: $*" >&2; exit 1; }

# pid_of NAME FILE: the pid in FILE if that process is alive and is NAME (a pid file outlives its process, and
# its pid may have gone to another), else nothing.
pid_of() {
  local pid
  [[ -s "$2" ]] || return 0
  pid="$(tr -dc 0-9 < "$2")"
  [[ -n "$pid" && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$1" ]] && echo "$pid"
  return 0
}

ours_up() { [[ -n "$(pid_of slurmctld "$dir/slurmctld.pid")" ]] && scontrol ping 2>/dev/null | grep -q "is UP"; }

# The reason another cluster is here, or nothing.
foreign() {
  local name ours pid stat others
  if [[ -n "$outer_conf" && "$(realpath -m "$outer_conf")" != "$conf" ]]; then
    echo "SLURM_CONF is set to $outer_conf"; return
  fi
  if [[ -e "$system_conf" ]] && ! grep -qF "$marker" "$system_conf"; then
    echo "$system_conf exists and was not written by this script"; return
  fi
  for name in slurmctld slurmd; do
    ours="$(pid_of "$name" "$dir/$name.pid")"
    others=()
    for pid in $(pgrep -x "$name" || true); do
      [[ "$pid" == "$ours" ]] && continue
      stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
      stat="${stat##*) }"  # state ppid ...: a daemon's exited forks (zombies until reaped) and its children aside
      [[ "${stat%% *}" == Z ]] && continue
      stat="${stat#* }"
      [[ -n "$ours" && "${stat%% *}" == "$ours" ]] && continue
      others+=("$pid")
    done
    [[ ${#others[@]} -eq 0 ]] || { echo "$name processes this script did not start run (pids ${others[*]})"; return; }
  done
}

write_conf() {
  local cpus memory
  cpus="$(nproc)"
  memory="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
  mkdir -p "$dir/ctld" "$dir/d" "$dir/log"
  cat > "$conf.tmp" <<EOF
$marker: one node, this host. Use it with SLURM_CONF=$conf.
ClusterName=icl-lr-local
SlurmctldHost=$host
SlurmctldPort=$port
SlurmdPort=$((port + 1))
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
  mv "$conf.tmp" "$conf"
}

munge_answers() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  munge_answers && return  # a running munged, ours or not: reused
  [[ -s /etc/munge/munge.key ]] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null; }
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge "$dir/munge"
  chown munge:munge /run/munge /var/log/munge /var/lib/munge "$dir/munge" 2>/dev/null || true
  if id munge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force --pid-file="$dir/munge/munged.pid"
  else
    /usr/sbin/munged --force --pid-file="$dir/munge/munged.pid"
  fi
  munge_answers || fail "munged does not answer (see /var/log/munge/munged.log)"
}

wait_for_node() {
  local state=""
  for _ in $(seq 60); do
    state="$(sinfo -h -n "$host" -o %t 2>/dev/null || true)"
    [[ "$state" == idle* || "$state" == mix* || "$state" == alloc* ]] && return
    [[ "$state" == down* || "$state" == drain* ]] && scontrol update nodename="$host" state=resume 2>/dev/null || true
    sleep 0.5
  done
  fail "node $host is '${state:-unknown}' (logs: $dir/log/slurmctld.log, $dir/log/slurmd.log)"
}

start() {
  local why
  [[ $EUID -eq 0 ]] || fail "start needs root (it starts the daemons)"
  command -v slurmctld >/dev/null || fail "no slurmctld: apt-get install slurm-wlm munge"
  if [[ "$force" != 1 ]]; then
    why="$(foreign)"
    [[ -z "$why" ]] || fail "another SLURM is here ($why): not starting; --force or LOCAL_SLURM_FORCE=1 to start anyway"
  fi
  if ours_up; then  # up: its config brought to this call's (KillWait), the daemons told
    write_conf
    scontrol reconfigure
    echo "local_slurm: already up (KillWait ${LOCAL_SLURM_KILL_WAIT:-30} s); export SLURM_CONF=$conf"
    return
  fi
  write_conf
  start_munge
  [[ -n "$(pid_of slurmctld "$dir/slurmctld.pid")" ]] || slurmctld -i -f "$conf"
  [[ -n "$(pid_of slurmd "$dir/slurmd.pid")" ]] || slurmd -f "$conf"
  wait_for_node
  echo "local_slurm: up, node $host with $(nproc) CPUs in partition local (KillWait ${LOCAL_SLURM_KILL_WAIT:-30} s)"
  echo "local_slurm: to use it: export SLURM_CONF=$conf"
}

# stop_pid NAME PID: SIGTERM, then SIGKILL past the bound; returns once PID is gone.
stop_pid() {
  local name="$1" pid="$2" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < stop_wait * 4; i++)); do
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]] || return 0
    sleep 0.25
  done
  echo "local_slurm: $name (pid $pid) still up after ${stop_wait} s: SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 40); do [[ -d "/proc/$pid" ]] || return 0; sleep 0.25; done
}

stop() {
  local files=() file name pid jobs stopped=()
  for file in "$dir/slurmctld.pid" "$dir/slurmd.pid" "$dir/munge/munged.pid"; do [[ -e "$file" ]] && files+=("$file"); done
  if [[ ${#files[@]} -eq 0 ]]; then
    echo "local_slurm: no pid files in $dir: nothing of ours to stop"
    return
  fi
  if ours_up && [[ -f "$conf" ]]; then  # our controller: its jobs cancelled, their steps killed at once
    jobs="$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')"
    if [[ -n "${jobs// /}" ]]; then
      # shellcheck disable=SC2086
      scancel --full --signal=KILL $jobs 2>/dev/null || true
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 40); do [[ -z "$(squeue -h 2>/dev/null)" ]] && break; sleep 0.25; done
    fi
  fi
  for name in slurmctld slurmd; do
    pid="$(pid_of "$name" "$dir/$name.pid")"
    [[ -z "$pid" ]] || { stop_pid "$name" "$pid"; stopped+=("$name"); }
    rm -f "$dir/$name.pid"
  done
  pid="$(pid_of munged "$dir/munge/munged.pid")"
  [[ -z "$pid" ]] || { stop_pid munged "$pid"; stopped+=(munged); }
  rm -f "$dir/munge/munged.pid"
  if [[ ${#stopped[@]} -eq 0 ]]; then
    echo "local_slurm: stopped (nothing was running: its pid files were stale)"
  else
    echo "local_slurm: stopped ${stopped[*]}"
  fi
}

status() {
  if ours_up; then
    sinfo
    squeue
    echo "local_slurm: up; to use it: export SLURM_CONF=$conf"
  else
    echo "local_slurm: not running (its config: $conf)"
    exit 1
  fi
}

verb="${1:-}"
for arg in "${@:2}"; do
  case "$arg" in
    --force) force=1 ;;
    *) fail "unknown option $arg (usage: scripts/local_slurm.sh start [--force]|stop|status|env)" ;;
  esac
done
case "$verb" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$conf" ;;
  *) fail "usage: scripts/local_slurm.sh start [--force]|stop|status|env" ;;
esac
