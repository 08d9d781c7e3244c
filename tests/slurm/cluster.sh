#!/bin/bash
# Start (up [NNODES]) or stop (down) a real Slurm cluster on this one machine, for the tests of slurm/*.sbatch.
# Needs root and Debian's slurmctld slurmd slurm-client munge (installed here if missing). Nodes node1..nodeN are
# emulated by one slurmd each (Debian builds Slurm with MULTIPLE_SLURMD); state and logs live in $SLURM_TEST_DIR.
set -euo pipefail
D=${SLURM_TEST_DIR:-${TMPDIR:-/tmp}/pyramid_dm-slurm}
cmd=${1:-up}

down() {
  pkill -x slurmctld 2>/dev/null || true
  pkill -x slurmd 2>/dev/null || true
  sed -i '/pyramid_dm-slurm-nodes/d' /etc/hosts 2>/dev/null || true
}
if [ "$cmd" = down ]; then down; exit 0; fi

NNODES=${2:-2}
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
fi
down
rm -rf "$D" && mkdir -p "$D"/{state,spool,run,log} /etc/slurm
NAMES=$(seq -f 'node%g' 1 "$NNODES" | tr '\n' ' ')
echo "127.0.0.1 $NAMES # pyramid_dm-slurm-nodes" >> /etc/hosts   # MASTER_ADDR is the first node's name
for n in $NAMES; do mkdir -p "$D/spool/$n"; done
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=pyramid_dm_test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MailProg=/bin/true
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd-%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd-%n.log
SlurmdParameters=config_overrides
# CPUs: the machine's (nproc alone honours OMP_NUM_THREADS, which a one-thread test run sets: 1-CPU nodes)
NodeName=node[1-$NNODES] NodeHostName=localhost NodeAddr=127.0.0.1 Port=[17001-$((17000 + NNODES))] CPUs=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc) RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 100); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi
/usr/sbin/slurmctld -c
for n in $NAMES; do /usr/sbin/slurmd -N "$n"; done
for _ in $(seq 300); do
  [ "$(sinfo -h -N -o '%T' 2>/dev/null | sort -u | tr -d '\n')" = idle ] && exit 0
  sleep 0.1
done
echo "the Slurm test cluster did not come up:" >&2
sinfo -N >&2 || true
tail -n 30 "$D"/log/*.log >&2
exit 1
