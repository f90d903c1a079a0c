#!/usr/bin/env bash
# Multi-node peftlab training on SLURM: 2 nodes x 4 GPUs = 8 processes, one per GPU.
#
#   sbatch scripts/slurm_multinode.sh                          # srun starts the 8 processes (default)
#   LAUNCHER=torchrun sbatch scripts/slurm_multinode.sh        # srun starts one torchrun per node instead
#   STRATEGY=fsdp sbatch scripts/slurm_multinode.sh            # configs/trainer/fsdp.yaml (or deepspeed)
#
# Lightning reads the layout from SLURM (srun) or from torchrun's variables: --trainer.num_nodes must
# equal --nodes and --trainer.devices must equal the GPUs (tasks) per node. Every process runs with
# data.batch_size examples per step: the global batch is batch_size x 8. Edit the #SBATCH lines, the
# configs and the data path for your cluster and task; run from the repository root (make setup first).
#
#SBATCH --job-name=peftlab
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4          # srun launcher: one task per GPU (LAUNCHER=torchrun ignores it)
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%j.out

set -euo pipefail
NODES=${SLURM_JOB_NUM_NODES:-2}
GPUS_PER_NODE=${GPUS_PER_NODE:-4}
STRATEGY=${STRATEGY:-ddp}             # ddp | fsdp | deepspeed: configs/trainer/$STRATEGY.yaml
LAUNCHER=${LAUNCHER:-srun}            # srun | torchrun
PEFTLAB_ARGS=(
  --config configs/protein/backbones/esm2_t33_650M.yaml --config configs/methods/lora.yaml
  --config configs/protein/data/flip_gb1.yaml --data.path two_vs_rest.csv
  --config "configs/trainer/${STRATEGY}.yaml"
  --trainer.num_nodes "$NODES" --trainer.devices "$GPUS_PER_NODE"
  --data.init_args.batch_size 16 --seed_everything 0
  --trainer.default_root_dir "runs/slurm-${SLURM_JOB_ID:-local}"
)

export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-8}
# export NCCL_DEBUG=WARN NCCL_SOCKET_IFNAME=ib0   # cluster-specific network settings go here

if [[ "$LAUNCHER" == "srun" ]]; then
  # one task per GPU; Lightning's SLURMEnvironment takes rank, world size and the master node from SLURM
  srun --ntasks-per-node="$GPUS_PER_NODE" .venv/bin/peftlab fit "${PEFTLAB_ARGS[@]}"
else
  # one torchrun per node; torchrun starts one process per GPU and rendezvouses on the first node
  HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  srun --ntasks-per-node=1 .venv/bin/torchrun --nnodes "$NODES" --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d --rdzv-endpoint "$HEAD:29500" \
    -m peftlab.cli fit "${PEFTLAB_ARGS[@]}"
fi
