"""``reparam.fuse`` on models it was not written for: same function, or a stated refusal.

    python benchmarks/soundness_sweep.py             # the models below (timm and torchvision)
    python benchmarks/soundness_sweep.py resnet18 tv:mobilenet_v2   # named ones
    python benchmarks/soundness_sweep.py --ultralytics   # YOLO models (needs ultralytics)

The Rep-style sweep (``timm_sweep.py``) asks whether reparam folds what timm's own code
folds; this one asks whether it ever changes what a model computes. It takes ordinary
classification networks from two libraries (and, on request, ultralytics' detectors, whose
top-level forward does not trace), spelled the many ways their authors write
layers (BatchNorm subclasses with activations, ``F.batch_norm``, in-place activations,
squeeze-excite, layer scales, attention, shape asserts, windowing), in float64 with
realistic BatchNorm statistics (:func:`reparam.models.realistic_bn_`), and checks for each:

* the fused model's output against the original's: ``max|diff| <= 1e-9 max|ref|``;
* the original model unchanged (every ``state_dict`` entry bit for bit);
* what was folded (rule counts), for ultralytics' models the Conv and BatchNorm modules
  left beside those its own ``model.fuse()`` leaves, and, for a model traced whole, every conv-like or
  BatchNorm-like layer left in the output explained by the report (``Report.kept``).

``example_inputs`` is passed (each model's own input size), so the check inside
``reparam.fuse`` runs as well. Nothing is downloaded (random weights). A model prints
``OK``, ``REFUSED`` (a :class:`reparam.ReparamError`, with its message) or ``WRONG`` (any
other outcome); the exit status is 1 if any is ``WRONG``.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings

import torch

TIMM = ("resnet18", "resnet50d", "resnext26ts", "seresnet18", "resnetv2_50", "res2net50_14w_8s",
        "efficientnet_b0", "mobilenetv3_small_100", "mobilenetv2_050", "fbnetv3_b", "tinynet_e",
        "lcnet_050", "mixnet_s", "rexnet_100", "ghostnet_100", "ghostnetv2_100", "regnetx_002",
        "regnety_002", "gernet_s", "hgnetv2_b0", "dla34", "densenet121", "dpn48b",
        "hrnet_w18_small", "cspdarknet53", "darknet17", "vovnet39a", "ese_vovnet19b_dw",
        "inception_v3", "xception41", "selecsls42b", "nf_resnet26", "tresnet_m", "convnext_atto",
        "edgenext_xx_small", "poolformer_s12", "poolformerv2_s12", "efficientvit_b0",
        "mobilevit_xxs", "mobilevitv2_050", "levit_128s", "xcit_nano_12_p16_224",
        "vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224",
        "efficientformer_l1", "efficientformerv2_s0", "coatnet_nano_rw_224", "maxvit_nano_rw_256",
        "lambda_resnet26t", "botnet26t_256", "fastvit_mci0", "starnet_s1", "rdnet_tiny",
        "mambaout_femto", "inception_next_tiny")
TORCHVISION = ("resnet18", "mobilenet_v3_small", "mobilenet_v2", "efficientnet_b0",
               "regnet_x_400mf", "shufflenet_v2_x0_5", "squeezenet1_0", "googlenet", "mnasnet0_5",
               "densenet121", "resnext50_32x4d", "convnext_tiny", "maxvit_t", "swin_t")
#: model configurations of ultralytics (the extra ``ultralytics``; the tests do not need it)
ULTRALYTICS = ("yolov3-tinyu", "yolov5nu", "yolov6n", "yolov8n", "yolov8n-seg", "yolov8n-cls",
               "yolov9t", "yolov10n", "yolo11n", "yolo11n-pose", "yolo12n", "rtdetr-l")
TOL = 1e-9


def _ultralytics(name: str):
    from ultralytics.nn import tasks

    cls = (tasks.SegmentationModel if "-seg" in name else tasks.PoseModel if "-pose" in name
           else tasks.ClassificationModel if "-cls" in name else tasks.RTDETRDetectionModel
           if name.startswith("rtdetr") else tasks.DetectionModel)
    return cls(name + ".yaml", verbose=False), (224, 224) if "-cls" in name else (160, 160)


def build(name: str):
    """(float64 eval model with realistic BatchNorm statistics, example input) for ``name``
    (``tv:`` prefix: torchvision; ``ul:``: ultralytics)."""
    from reparam.models import realistic_bn_

    torch.manual_seed(0)
    if name.startswith("tv:"):
        import torchvision

        name = name[3:]
        extra = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
        model = getattr(torchvision.models, name)(weights=None, num_classes=10, **extra)
        size = (224, 224) if name in ("maxvit_t", "swin_t") else (96, 96)
    elif name.startswith("ul:"):
        model, size = _ultralytics(name[3:])
    else:
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=10)
        size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224))[1:])
    g = torch.Generator().manual_seed(0)
    realistic_bn_(model, lambda gen: torch.randn(2, 3, *size, generator=gen), 1, g)
    for m in model.modules():  # a zero-initialised head would hide every difference
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=m.in_features ** -0.5)
    return model.double().eval(), torch.randn(2, 3, *size, dtype=torch.float64, generator=g)


def _tensors(out) -> list:
    """The tensors of a model's output (detectors return lists and dicts of them)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in _tensors(o)] if isinstance(out, (list, tuple)) else []


def _layers(model) -> str:
    mods = list(model.modules())
    return (f"{sum(isinstance(m, torch.nn.modules.conv._ConvNd) for m in mods)}/"
            f"{sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in mods)}")


def check(name: str) -> tuple[str, str]:
    import reparam

    model, x = build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = _tensors(model(x))
    try:
        fused, report = reparam.fuse(model, x, report=True, rtol=TOL)
    except reparam.ReparamError as e:
        return "REFUSED", f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    with torch.no_grad():
        got = _tensors(fused(x))
    if len(got) != len(ref):
        return "WRONG", f"{len(got)} output tensors, the original {len(ref)}"
    error = max(((g - r).abs().max() / r.abs().max()).item() for g, r in zip(got, ref))
    unchanged = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    kept = {k.node for k in report.kept}
    layers = (torch.nn.modules.conv._ConvNd, torch.nn.modules.batchnorm._BatchNorm)
    unexplained = [n.target for n in getattr(fused, "graph", torch.fx.Graph()).nodes
                   if n.op == "call_module" and isinstance(fused.get_submodule(n.target), layers)
                   and not any(n.target == k.replace(".", "_") for k in kept)]
    fired = ", ".join(f"{r} x{c}" for r, c in sorted(report.fired.items())) or "nothing"
    text = f"error {error:.1e}, folded: {fired}"
    if name.startswith("ul:"):  # against the framework's own fuser
        own = copy.deepcopy(model).fuse(verbose=False)
        text += f"; Conv/BatchNorm modules {_layers(fused)} (ultralytics' fuse: {_layers(own)})"
    if not (error <= TOL and unchanged and not unexplained):
        return "WRONG", f"{text}; unchanged {unchanged}; unexplained {unexplained[:3]}"
    return "OK", text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", help="timm names, tv:<name> for torchvision, ul:<name> "
                                             "for ultralytics")
    p.add_argument("--ultralytics", action="store_true", help="the ultralytics models")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    names = args.models or (["ul:" + n for n in ULTRALYTICS] if args.ultralytics else
                            list(TIMM) + ["tv:" + n for n in TORCHVISION])
    wrong = 0
    for name in names:
        start = time.perf_counter()
        try:
            verdict, text = check(name)
        except Exception as e:  # noqa: BLE001 - anything but a ReparamError is a defect
            verdict, text = "WRONG", f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        wrong += verdict == "WRONG"
        print(f"{verdict:8s} {name:32s} {time.perf_counter() - start:5.1f} s  {text}", flush=True)
    print(f"{len(names)} models, {wrong} wrong")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
