"""Architectures, activations, normalization and checkpoints of the train stage (synthetic tensors, no training)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from elunet.card import CARD_FILE, ExportInfo
from elunet.contracts import WEIGHTS_FILE
from elunet.errors import ElunetError
from elunet.train.activations import ACTIVATIONS, SReLU, make_activation
from elunet.train.checkpoint import LATEST_FILE, load_checkpoint, save_checkpoint, save_run_checkpoint
from elunet.train.models import ARCHITECTURES, build_model, describe_model
from elunet.train.normalize import GcnZca, MeanStd, fit_normalization

LABELS10 = [f"c{i}" for i in range(10)]


def card_for(arch="fashion-cnn", activation="elu", shape=(1, 28, 28), classes=10, bn=False, normalization="meanstd", alpha=None):
    return describe_model(
        name=f"{arch}-{activation}", architecture=arch, activation=activation, alpha=alpha, batch_norm=bn,
        dataset="synthetic", labels=[f"c{i}" for i in range(classes)], input_shape=shape, normalization=normalization,
    )


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("arch", sorted(set(ARCHITECTURES) - {"elu-cifar18"}))
def test_every_architecture_and_activation_gives_logits_per_class(arch, activation):
    shape, classes = ((1, 28, 28), 10) if arch in ("fashion-cnn", "mlp-8x128") else ((3, 32, 32), 100)
    model = build_model(card_for(arch, activation, shape, classes, bn=activation == "relu"))
    out = model.eval()(torch.rand(2, *shape))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()
    n_act = sum(isinstance(m, type(make_activation(activation))) for m in model.modules())
    assert n_act > 0


@pytest.mark.slow
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_elu_cifar18_gives_logits_per_class(activation):
    model = build_model(card_for("elu-cifar18", activation, (3, 32, 32), 10))
    assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_cifar11_follows_the_paper():
    body = build_model(card_for("elu-cifar11", "elu", (3, 32, 32), 100)).body
    convs = [m for m in body.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0]) for c in convs] == [
        (192, 5), (192, 1), (240, 3), (240, 1), (260, 2), (260, 1), (280, 2), (280, 1), (300, 2), (300, 1), (100, 1)
    ]
    assert sum(isinstance(m, nn.MaxPool2d) for m in body.modules()) == 5
    assert [m.p for m in body.modules() if isinstance(m, nn.Dropout)] == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert sum(isinstance(m, nn.ELU) for m in body.modules()) == 10  # not on the output layer


def test_cifar18_has_the_papers_layers():
    body = build_model(card_for("elu-cifar18", "elu", (3, 32, 32), 100)).body
    units = [m.out_channels for m in body.modules() if isinstance(m, nn.Conv2d)]
    assert units == [384, 384, 384, 640, 640, 640, 768, 768, 768, 768, 896, 896, 896, 1024, 1024, 1024, 1152, 1152, 100]


def test_mlp_has_eight_hidden_layers_of_128():
    body = build_model(card_for("mlp-8x128", "relu")).body
    assert [m.out_features for m in body.modules() if isinstance(m, nn.Linear)] == [128] * 8 + [10]


def test_batch_norm_follows_each_conv_but_the_output():
    body = build_model(card_for("elu-cifar11", "elu", (3, 32, 32), 100, bn=True)).body
    assert sum(isinstance(m, nn.BatchNorm2d) for m in body.modules()) == 10


def test_unknown_names_are_user_errors():
    with pytest.raises(ElunetError, match="unknown architecture"):
        card_for("resnet")
    with pytest.raises(ElunetError, match="unknown activation"):
        card_for(activation="gelu")
    with pytest.raises(ElunetError, match="no alpha"):
        card_for(activation="relu", alpha=0.5)
    with pytest.raises(ElunetError, match="invalid model name"):
        describe_model(name="../evil", architecture="fashion-cnn", activation="elu", alpha=None, batch_norm=False,
                       dataset="synthetic", labels=LABELS10, input_shape=(1, 28, 28), normalization="meanstd")


# ---------------------------------------------------------------- activations

finite = st.floats(-80, 80, allow_nan=False)
alphas = st.floats(0.05, 5.0)


@settings(max_examples=200, deadline=None)
@given(x=finite, alpha=alphas)
def test_elu_matches_its_definition(x, alpha):
    y = make_activation("elu", alpha)(torch.tensor([x], dtype=torch.float64)).item()
    expected = x if x > 0 else alpha * math.expm1(x)
    assert y == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert y >= -alpha


@settings(max_examples=200, deadline=None)
@given(x=st.floats(-30, 0), alpha=alphas)
def test_elu_derivative_is_f_plus_alpha_for_nonpositive_x(x, alpha):
    t = torch.tensor([x], dtype=torch.float64, requires_grad=True)
    y = make_activation("elu", alpha)(t)
    y.backward()
    assert t.grad.item() == pytest.approx(y.item() + alpha, rel=1e-12, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(x=st.floats(1e-6, 80), alpha=alphas)
def test_elu_derivative_is_one_for_positive_x(x, alpha):
    t = torch.tensor([x], dtype=torch.float64, requires_grad=True)
    make_activation("elu", alpha)(t).backward()
    assert t.grad.item() == 1.0


@given(alpha=alphas)
def test_elu_special_values(alpha):
    y = make_activation("elu", alpha)(torch.tensor([-math.inf, math.inf, math.nan]))
    assert y[0].item() == pytest.approx(-alpha)
    assert y[1].item() == math.inf
    assert math.isnan(y[2].item())


@settings(max_examples=100, deadline=None)
@given(x=finite)
def test_baselines_match_their_definitions(x):
    t = torch.tensor([x], dtype=torch.float64)
    assert make_activation("relu")(t).item() == max(0.0, x)
    assert make_activation("lrelu")(t).item() == pytest.approx(x if x > 0 else 0.1 * x)
    assert make_activation("srelu")(t).item() == max(-1.0, x)
    assert make_activation("celu", 1.0)(t).item() == pytest.approx(make_activation("elu", 1.0)(t).item())
    selu = 1.0507009873554805 * (x if x > 0 else 1.6732632423543772 * math.expm1(x))
    assert make_activation("selu")(t).item() == pytest.approx(selu, rel=1e-9, abs=1e-12)


def test_srelu_keeps_nan():
    assert math.isnan(SReLU()(torch.tensor([math.nan])).item())


def test_elu_is_a_real_elu_module_carrying_alpha():
    act = make_activation("elu", 0.5)
    assert isinstance(act, nn.ELU) and act.alpha == 0.5


# ---------------------------------------------------------------- normalization


def test_meanstd_standardizes_each_channel():
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(500, 3, 8, 8, generator=g) * torch.tensor([0.2, 0.5, 1.0])[:, None, None]).mul(255).to(torch.uint8)
    norm = fit_normalization("meanstd", images)
    out = norm(images.float() / 255)
    assert out.mean((0, 2, 3)).abs().max() < 1e-4
    assert (out.std((0, 2, 3)) - 1).abs().max() < 1e-3


def test_gcn_zca_whitens_correlated_images():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(2000, 1, 1, 1, generator=g)
    images = (0.5 * base + 0.3 * torch.rand(2000, 3, 4, 4, generator=g)).clamp(0, 1)  # strongly correlated pixels
    norm = fit_normalization("gcn+zca", images)
    assert isinstance(norm, GcnZca)
    white = norm(images).flatten(1).double()
    cov = torch.cov(white.T)
    off = cov - torch.diag(torch.diag(cov))
    raw_cov = torch.cov(GcnZca.contrast_normalize(images).flatten(1).double().T)
    raw_off = raw_cov - torch.diag(torch.diag(raw_cov))
    assert off.abs().max() < 0.05 * raw_off.abs().max()  # decorrelated
    assert torch.allclose(norm.zca_matrix, norm.zca_matrix.T, atol=1e-5)  # ZCA (not PCA) whitening is symmetric


# ---------------------------------------------------------------- checkpoints


def _trained_like(card):
    model = build_model(card, fit_normalization(card.preprocessing.normalization, torch.rand(64, *card.input_shape)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("normalization", ["meanstd", "gcn+zca"])
def test_checkpoint_round_trip_gives_the_same_outputs(tmp_path, normalization):
    card = card_for(bn=True, normalization=normalization, shape=(1, 12, 12))
    model = _trained_like(card)
    saved = save_checkpoint(tmp_path / "ck", model, card)
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.card == saved and loaded.sha256 == saved.weights_sha256
    assert not loaded.model.training and loaded.path == tmp_path / "ck"
    x = torch.rand(4, *card.input_shape)
    torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)
    # the fitted normalization travels in the weights
    torch.testing.assert_close(loaded.model.normalize.state_dict(), model.normalize.state_dict())


def test_run_folder_resolves_to_latest_and_keeps_two(tmp_path):
    card = card_for()
    model = _trained_like(card)
    for epoch in (1, 2, 3):
        save_run_checkpoint(tmp_path, epoch, model, card, torch.optim.SGD(model.parameters(), lr=0.1), {"epoch": epoch})
    assert (tmp_path / LATEST_FILE).read_text().strip() == "epoch-0003"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["epoch-0002", "epoch-0003"]
    assert load_checkpoint(tmp_path).path == tmp_path / "epoch-0003"


def test_repository_version_folder_with_export_section_loads(tmp_path):
    card = card_for()
    saved = save_checkpoint(tmp_path / "ck", _trained_like(card), card)
    version = tmp_path / "repo" / "m" / "1"
    version.mkdir(parents=True)
    (version / WEIGHTS_FILE).write_bytes((tmp_path / "ck" / WEIGHTS_FILE).read_bytes())
    exported = saved.model_copy(update={"export": ExportInfo(elu_mode="native", opset=18, dtype="fp32", exporter="x", source_checkpoint_sha256=saved.weights_sha256, parity="passed")})
    exported.save(version / CARD_FILE)
    assert load_checkpoint(version).card.export.elu_mode == "native"


def test_card_weights_mismatch_is_explained(tmp_path):
    card = card_for()
    save_checkpoint(tmp_path / "ck", _trained_like(card), card)
    wrong = card_for(classes=12).model_copy(update={"weights_sha256": None})
    wrong.save(tmp_path / "ck" / CARD_FILE)
    with pytest.raises(ElunetError, match=r"does not match its card.*12 classes") as err:
        load_checkpoint(tmp_path / "ck")
    assert "body.fc.weight" in str(err.value)
    card_for("mlp-8x128").save(tmp_path / "ck" / CARD_FILE)
    with pytest.raises(ElunetError, match="missing tensors"):
        load_checkpoint(tmp_path / "ck")


def test_damaged_or_missing_files_are_explained(tmp_path):
    with pytest.raises(ElunetError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ElunetError, match="missing model.safetensors, card.json"):
        load_checkpoint(tmp_path / "empty")
    card = card_for()
    save_checkpoint(tmp_path / "ck", _trained_like(card), card)
    weights = tmp_path / "ck" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ElunetError, match="sha256"):
        load_checkpoint(tmp_path / "ck")
    card.save(tmp_path / "ck" / CARD_FILE)  # a card without a hash: the damage shows when reading
    with pytest.raises(ElunetError, match="cannot read|truncated or corrupt"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / CARD_FILE).write_text("{not json")
    with pytest.raises(ElunetError, match="not a valid elunet model card"):
        load_checkpoint(tmp_path / "ck")


def test_cli_choices_name_exactly_the_implemented_ones():
    from elunet.train.config import ACTIVATION_NAMES, ARCHITECTURE_NAMES, DATASET_NAMES
    from elunet.train.data import DATASETS, IMAGEFOLDER

    assert ARCHITECTURE_NAMES == tuple(ARCHITECTURES)
    assert ACTIVATION_NAMES == tuple(ACTIVATIONS)
    assert set(DATASET_NAMES) == {*DATASETS, IMAGEFOLDER}


def test_schedules():
    from elunet.train.schedules import SCHEDULES, lr_at

    assert [lr_at("paper-cifar", s, 165_000, 0.01) for s in (0, 34_999, 35_000, 85_000, 135_000, 164_999)] == pytest.approx(
        [0.01, 0.01, 0.005, 0.0005, 0.00005, 0.00005]
    )
    one = [lr_at("onecycle", s, 1000, 0.1) for s in range(1000)]
    assert one[0] == pytest.approx(0.1 / 25) and max(one) == pytest.approx(0.1) and one.index(max(one)) == 200 and one[-1] < 1e-5
    assert [lr_at("step", s, 1000, 0.1) for s in (0, 499, 500, 750)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert lr_at("constant", 7, 10, 0.3) == 0.3
    with pytest.raises(ElunetError, match="(?s)unknown schedule.*" + ".*".join(SCHEDULES)):
        lr_at("warmup", 0, 10, 0.1)


def test_step_schedule_of_a_one_epoch_run_starts_at_the_full_rate():
    from elunet.train.schedules import lr_at

    # one epoch of 10 steps: lr for steps 0-4, lr/10 for 5-7, lr/100 for 8-9 (it was lr/100 throughout)
    assert [lr_at("step", s, 10, 0.1) for s in range(10)] == pytest.approx([0.1] * 5 + [0.01] * 3 + [0.001] * 2)
