"""Backbone families: every checkpoint layout loads its body exactly, with a new head; preprocessing from configs."""

from __future__ import annotations

import argparse
import json
import math
import re
import warnings

import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision

from enstune.errors import EnstuneError
from enstune.models import (classifier_prefix, create_model, from_pretrained, list_models, load_checkpoint,
                            preprocess, stage_modules)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TINY_CLIP = "enstune-tiny-clip"
TINY_CFG = {"embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def assert_body_loaded(model, state, num_classes):
    """Every non-head weight of ``model`` equals ``state``'s (in the model's keys); the head is new."""
    head = classifier_prefix(model) + "."
    own = model.state_dict()
    body = [k for k in own if not k.startswith(head) and not k.endswith("num_batches_tracked")]
    assert body and all(k in state for k in body), [k for k in body if k not in state][:3]
    unequal = [k for k in body if not torch.equal(own[k], state[k].to(own[k].dtype))]
    assert not unequal, unequal[:3]
    assert model.get_classifier().out_features == num_classes
    shape = preprocess(model).input_size if preprocess(model) else (1, 8, 8)  # the demo's digits
    assert model.eval()(torch.zeros(2, *shape)).shape == (2, num_classes)


def resnet_state(num_classes=5):
    torch.manual_seed(1)
    return timm.create_model("test_resnet", num_classes=num_classes).state_dict()


def test_bare_state_dict(tmp_path):
    state = resnet_state()
    torch.save(state, tmp_path / "bare.pt")
    torch.manual_seed(0)
    model = from_pretrained("test_resnet", tmp_path / "bare.pt", num_classes=3)
    assert_body_loaded(model, state, 3)
    torch.manual_seed(0)
    assert torch.equal(model.fc.weight, create_model("test_resnet", 3).fc.weight), "the head is drawn as when created"


def test_ddp_training_checkpoint(tmp_path):
    """The supervised ResNet-50 files: PyTorch's ImageNet example saves DDP keys and its optimizer."""
    state = resnet_state()
    net = timm.create_model("test_resnet", num_classes=5)
    torch.save({"epoch": 90, "arch": "test_resnet", "best_acc1": torch.tensor(76.1),
                "state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer": torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9).state_dict(),
                "args": argparse.Namespace(lr=0.1)}, tmp_path / "ddp.pth.tar")
    assert_body_loaded(from_pretrained("test_resnet", tmp_path / "ddp.pth.tar", num_classes=7), state, 7)


def test_byol_model_state_with_a_prefix(tmp_path):
    state = resnet_state()
    projector = {"projector.0.weight": torch.randn(8, 64), "projector.0.bias": torch.randn(8)}
    keys = {f"module.backbone.{k}": v for k, v in state.items()} | {f"module.{k}": v for k, v in projector.items()}
    torch.save({"model_state": keys, "epoch": 300}, tmp_path / "byol.pt")
    assert_body_loaded(from_pretrained("test_resnet", tmp_path / "byol.pt", 4, prefix="backbone."), state, 4)
    with pytest.raises(EnstuneError, match=r"does not fit test_resnet: \d+ missing keys \(conv1\.0\.weight, "
                                           r".*unexpected \(backbone\.conv1\.0\.weight, "):
        from_pretrained("test_resnet", tmp_path / "byol.pt", 4)
    with pytest.raises(EnstuneError, match=r"no key of checkpoint .*byol.pt starts with prefix 'encoder_q\.'"):
        from_pretrained("test_resnet", tmp_path / "byol.pt", 4, prefix="encoder_q")


def test_misfit_names_the_first_keys_and_shapes(tmp_path):
    state = resnet_state()
    state["bn1.weight"] = torch.ones(3)
    state["extra.weight"] = torch.ones(2)
    del state["conv1.0.weight"]
    torch.save({"state_dict": state}, tmp_path / "wrong.pt")
    with pytest.raises(EnstuneError) as err:
        from_pretrained("test_resnet", tmp_path / "wrong.pt", 3)
    message = str(err.value)
    assert "\n" not in message
    assert re.search(r"wrong.pt does not fit test_resnet: 1 missing keys \(conv1\.0\.weight\), "
                     r"1 unexpected \(extra\.weight\), 1 of another shape \(bn1\.weight: 3 in the file, \d+ in the "
                     r"model\)", message), message


@pytest.fixture(scope="module")
def resnet50_from_torchvision(tmp_path_factory):
    path = tmp_path_factory.mktemp("tv") / "resnet50.pth"
    torch.manual_seed(2)
    state = torchvision.models.resnet50(weights=None).state_dict()
    torch.save(state, path)
    return from_pretrained("resnet50", path, num_classes=10), state


def test_torchvision_resnet50_loads_into_timm_resnet50_as_is(resnet50_from_torchvision):
    model, state = resnet50_from_torchvision
    assert set(model.state_dict()) == set(state), "the same key names"
    assert_body_loaded(model, state, 10)


@pytest.fixture(scope="module")
def swin_from_release(tmp_path_factory):
    """The official Swin release: downsampling at a stage's end, head.*, the buffers timm keeps non-persistent."""
    torch.manual_seed(3)
    source = timm.create_model("swin_tiny_patch4_window7_224", num_classes=1000)
    state = source.state_dict()
    release = {re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", k)
               .replace("head.fc.", "head."): v for k, v in state.items()}
    for name, module in source.named_modules():
        for buffer in ("relative_position_index", "attn_mask"):
            if getattr(module, buffer, None) is not None:
                release[f"{name}.{buffer}"] = getattr(module, buffer)
    assert "layers.0.downsample.reduction.weight" in release and "layers.0.blocks.1.attn_mask" in release
    path = tmp_path_factory.mktemp("swin") / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": release}, path)
    return from_pretrained("swin_tiny_patch4_window7_224", path, num_classes=10), state


def test_swin_release_converts_through_timms_filter(swin_from_release):
    model, state = swin_from_release
    assert classifier_prefix(model) == "head.fc"
    assert_body_loaded(model, state, 10)


def test_preprocess_from_the_models_configs(resnet50_from_torchvision, swin_from_release):
    assert preprocess(resnet50_from_torchvision[0]).__dict__ == dict(
        input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic", crop_pct=0.95)
    assert preprocess(swin_from_release[0]).__dict__ == dict(
        input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic", crop_pct=0.9)
    assert preprocess(create_model("demo_mlp", 10)) is None
    clip = preprocess(create_model(f"open_clip:{TINY_CLIP}", 3))
    assert clip.__dict__ == dict(input_size=(3, 32, 32), mean=open_clip.OPENAI_DATASET_MEAN,
                                 std=open_clip.OPENAI_DATASET_STD, interpolation="bicubic", crop_pct=1.0)


def test_unreadable_files_are_one_line_errors(tmp_path):
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(EnstuneError, match=r"^cannot read checkpoint .*junk.pt: [^\n]*$"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "empty.pt")
    with pytest.raises(EnstuneError, match=r"empty.pt holds no state dict .*found epoch, note"):
        load_checkpoint(tmp_path / "empty.pt")
    torch.save({"state_dict": resnet_state(), "model": timm.models.resnet.Bottleneck}, tmp_path / "pickled.pt")
    with pytest.raises(EnstuneError, match=r"pickles objects other than tensors \(timm\.models\.resnet\.Bottleneck"):
        load_checkpoint(tmp_path / "pickled.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated; its files still circulate
        torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), tmp_path / "scripted.pt")
    with pytest.raises(EnstuneError, match=r"scripted.pt is a TorchScript archive.*save its state dict"):
        load_checkpoint(tmp_path / "scripted.pt")


def test_unknown_names_and_heads():
    with pytest.raises(EnstuneError, match=r"unknown model 'resnet5000'; enstune has demo_mlp, and timm's model "
                                           r"names and open_clip:NAME work too"):
        create_model("resnet5000", 3)
    with pytest.raises(EnstuneError, match="open_clip has no model 'ViT-Q-99'"):
        create_model("open_clip:ViT-Q-99", 3)
    with pytest.raises(EnstuneError, match=r"head='zeroshot' needs a CLIP model"):
        from_pretrained("test_resnet", __file__, 3, head="zeroshot")  # refused before the file is read
    assert list_models() == ["demo_mlp"]


# --- open_clip ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def tiny_clip_configs(tmp_path_factory):
    """open_clip configs small enough for a test, registered the way a user adds one."""
    folder = tmp_path_factory.mktemp("clip-configs")
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CFG))
    (folder / f"{TINY_CLIP}-quickgelu.json").write_text(json.dumps(TINY_CFG | {"quick_gelu": True}))
    open_clip.add_model_config(folder)


def tiny_clip(name=TINY_CLIP, seed=4):
    torch.manual_seed(seed)
    clip = open_clip.create_model(name, pretrained=None)
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(100))
    return clip.eval()


def test_open_clip_checkpoint_loads_the_image_tower(tmp_path):
    clip = tiny_clip()
    state = clip.state_dict()
    torch.save({"epoch": 32, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "clip.pt")
    model = from_pretrained(f"open_clip:{TINY_CLIP}", tmp_path / "clip.pt", num_classes=4)
    assert not hasattr(model, "transformer"), "the text tower is dropped"
    assert_body_loaded(model, state, 4)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model.eval().forward_features(x), clip.encode_image(x), atol=1e-6)


def test_openai_state_dict_needs_a_quickgelu_name(tmp_path):
    clip = tiny_clip(f"{TINY_CLIP}-quickgelu")
    open_clip.convert_weights_to_fp16(clip)  # OpenAI's release keeps half-precision weights
    state = clip.state_dict() | {"input_resolution": torch.tensor(32), "context_length": torch.tensor(16),
                                 "vocab_size": torch.tensor(49408)}
    torch.save(state, tmp_path / "openai.pt")
    model = from_pretrained(f"open_clip:{TINY_CLIP}-quickgelu", tmp_path / "openai.pt", num_classes=3)
    assert_body_loaded(model, state, 3)
    assert model.visual.conv1.weight.dtype == torch.float32
    with pytest.raises(EnstuneError, match=rf"OpenAI's CLIP release.*name the model open_clip:{TINY_CLIP}-quickgelu"):
        from_pretrained(f"open_clip:{TINY_CLIP}", tmp_path / "openai.pt", num_classes=3)


def test_zeroshot_head_gives_clips_own_zeroshot_logits(tmp_path):
    clip = tiny_clip()
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    classes = ["cat", "dog", "airplane"]
    model = from_pretrained(f"open_clip:{TINY_CLIP}", tmp_path / "clip.pt", 3, head="zeroshot", class_names=classes)
    # CLIP's zero-shot classifier, written out: mean normalised prompt embedding per class, cosine, scale.
    tokenize = open_clip.get_tokenizer(TINY_CLIP)
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        texts = torch.stack([F.normalize(F.normalize(clip.encode_text(tokenize(
            [t(c) for t in open_clip.OPENAI_IMAGENET_TEMPLATES])), dim=-1).mean(0), dim=0) for c in classes])
        expected = clip.logit_scale.exp() * F.normalize(clip.encode_image(x), dim=-1) @ texts.T
        logits = model.eval()(x)
    assert torch.allclose(logits, expected, atol=1e-3), (logits - expected).abs().max()
    assert torch.equal(logits.argmax(1), expected.argmax(1))
    with pytest.raises(EnstuneError, match="needs one name per class: 4 class names, got 3"):
        from_pretrained(f"open_clip:{TINY_CLIP}", tmp_path / "clip.pt", 4, head="zeroshot", class_names=classes)
    torch.save({k: v for k, v in clip.state_dict().items() if k.startswith("visual.")}, tmp_path / "visual.pt")
    from_pretrained(f"open_clip:{TINY_CLIP}", tmp_path / "visual.pt", 3)  # a new head needs the image tower only
    with pytest.raises(EnstuneError, match=r"missing keys \(.*(transformer|token_embedding|positional)"):
        from_pretrained(f"open_clip:{TINY_CLIP}", tmp_path / "visual.pt", 3, head="zeroshot", class_names=classes)


def test_clip_stages_are_transformer_blocks():
    model = create_model(f"open_clip:{TINY_CLIP}", 3)
    assert [i["module"] for i in model.feature_info] == ["visual.transformer.resblocks.0",
                                                         "visual.transformer.resblocks.1"]
    frozen = stage_modules(model, 1)
    names = {id(m): n for n, m in model.named_modules()}
    assert names[id(frozen[0])] == "visual.conv1"
    assert all(not names[id(m)].startswith(("visual.transformer.resblocks.1", "head")) for m in frozen)
    assert any(names[id(m)].startswith("visual.transformer.resblocks.0.") for m in frozen)


@pytest.mark.parametrize("name", ["demo_mlp", "test_vit", f"open_clip:{TINY_CLIP}"])
def test_members_rebuild_from_create_model(name, tmp_path):
    member = create_model(name, 5)
    with torch.no_grad():
        for p in member.parameters():
            p.add_(torch.randn_like(p))
    rebuilt = create_model(name, 5)
    rebuilt.load_state_dict(member.state_dict())
    x = torch.rand(4, 1, 8, 8) if name == "demo_mlp" else torch.rand(4, *preprocess(member).input_size)
    assert torch.equal(rebuilt.eval()(x), member.eval()(x))
    # A member's own file is a checkpoint too: its body loads, its head is replaced.
    torch.save(member.state_dict(), tmp_path / "member.pt")
    assert_body_loaded(from_pretrained(name, tmp_path / "member.pt", 2), member.state_dict(), 2)
