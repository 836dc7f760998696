"""``torchrun --nproc_per_node=N -m tve_lib.distributed ...``: multi-process TVE pre-training, the entry
point of `tve_lib.studies.distributed` (its home)."""

from .studies.distributed import main

if __name__ == "__main__":
    main()
