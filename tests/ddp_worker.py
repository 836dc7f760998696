"""Run by tests/test_tve.py under torchrun: pre-train a tiny TVE and dump the per-step losses.

    ddp_worker.py OUT.json [ARCH SAMPLER [DATA]]   (dense: rank 0 builds the target store beside OUT)

DATA "files": the upstream images are a generated JPEG ImageFolder beside OUT, decoded by loader
workers, each rank reading only its slice of every global batch (the paper path).
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_backbone  # noqa: E402

from tve_lib.config import TVEConfig  # noqa: E402
from tve_lib.data import TensorImageSet  # noqa: E402
from tve_lib.explainers.tve import build_explainer, pretrain  # noqa: E402
from tve_lib.studies.distributed import init_distributed  # noqa: E402

out = Path(sys.argv[1])
rank, world, device = init_distributed()
torch.set_num_threads(1)
bb = tiny_backbone("vit")
g = torch.Generator().manual_seed(0)
imgs = torch.rand(96, 1, 32, 32, generator=g)
train = TensorImageSet("synthetic", imgs[:64], torch.zeros(64), ["x"])
val = TensorImageSet("synthetic", imgs[64:], torch.zeros(32), ["x"])
arch, sampler = (sys.argv[2], sys.argv[3]) if len(sys.argv) > 3 else ("two", "online")
if len(sys.argv) > 4 and sys.argv[4] == "files":
    import torch.distributed as dist

    from tve_lib.data import FolderImageSet  # noqa: E402
    from tve_lib.imagefolder import scan_imagefolder  # noqa: E402
    from tve_lib.synthetic import write_jpeg_folder  # noqa: E402

    root = out.parent / "jpegs"
    if rank == 0:
        write_jpeg_folder(root, 24, ["a", "b", "c", "d"], seed=0, sizes=((40, 48), (48, 36)))
    if world > 1:
        dist.barrier()
    files = FolderImageSet("jpegs", scan_imagefolder(root, check=False), 32)
    files.workers = 1
    train, val = files.subset(torch.arange(64)), files.subset(torch.arange(64, 96))
cfg = TVEConfig(depth=1, embed_dim=32, mix_hidden=32, epochs=2, n_images=64, batch_size=16,
                windows_per_image=2, n_heldout=16, lr=3e-3, arch=arch, sampler=sampler,
                centred_weight=1.0 if sampler == "online" else 4.0)
torch.manual_seed(0)
model = build_explainer(bb, cfg)
steps = []
pretrain(model, bb, train, val, cfg, out.with_suffix(".pt"), seed=0, progress=False,
         on_step=lambda s, k, r: steps.append([s, k, r]))
if rank == 0:
    w = torch.cat([p.detach().flatten() for p in model.parameters()])
    out.write_text(json.dumps({"world": world, "steps": steps, "wsum": w.double().sum().item(),
                               "wnorm": w.double().norm().item()}))
