"""klnotes.gpt2.policies: loading, the synthetic language, the cached tiny model."""

import dataclasses

import _tiny
import pytest
import torch

from klnotes.gpt2 import policies as P

SMALL = dataclasses.replace(_tiny.SMALL, pretrain_steps=3)


@pytest.fixture(scope="module")
def smoke_policy(tmp_path_factory):
    return P.tiny_policy(P.TINY_PRESETS["smoke"], tmp_path_factory.mktemp("cache"))


def test_language_rows_are_distributions_and_stationary_is_fixed_point():
    lang = P.synthetic_language(P.TinyLMConfig())
    assert lang.transition.shape == (16, 16) and lang.transition.dtype == torch.float64
    torch.testing.assert_close(
        lang.transition.sum(1), torch.ones(16, dtype=torch.float64), rtol=0, atol=1e-12
    )
    pi = lang.stationary()
    torch.testing.assert_close(pi @ lang.transition, pi, rtol=0, atol=1e-12)
    assert float(pi.sum()) == pytest.approx(1.0, abs=1e-12) and bool((pi > 0).all())


def test_language_is_deterministic_in_the_seed_and_differs_across_seeds():
    a, b = P.synthetic_language(SMALL), P.synthetic_language(SMALL)
    c = P.synthetic_language(P.TinyLMConfig(**{**SMALL.__dict__, "seed": 1}))
    assert torch.equal(a.transition, b.transition) and not torch.equal(a.transition, c.transition)


def test_sentence_lengths_are_geometric_with_mean_one_over_end_prob():
    lang = P.synthetic_language(P.TinyLMConfig(end_prob=0.1))
    _, lengths = lang.sample_words(4000, torch.Generator().manual_seed(0), max_words=400)
    # mean 1/p = 10, standard deviation sqrt(1-p)/p ~ 9.5 -> standard error 0.15; 4 sigma band
    assert abs(lengths.double().mean().item() - 10.0) < 0.6
    _, short = lang.sample_words(50, torch.Generator().manual_seed(0), max_words=3, min_words=2)
    assert int(short.min()) >= 2 and int(short.max()) <= 3


def test_pretrained_tiny_model_learns_the_language(smoke_policy):
    """Next-token distribution of the smoke model vs the true chain: KL(true || model) far below KL(true || uniform)."""
    config = P.TINY_PRESETS["smoke"]
    lang = P.synthetic_language(config)
    words, _ = lang.sample_words(256, torch.Generator().manual_seed(5), max_words=6, min_words=6)
    with torch.no_grad():
        lp = torch.log_softmax(smoke_policy.model(input_ids=words + 2).logits.double(), -1)
    true = torch.zeros_like(lp)
    true[..., 1] = lang.end_prob  # <eos>
    true[..., 2:] = (1 - lang.end_prob) * lang.transition[words]
    plogp = torch.xlogy(true, true)
    kl_model = (plogp - true * lp).sum(-1).mean().item()
    kl_uniform = (plogp + true * torch.log(torch.tensor(float(lp.size(-1))))).sum(-1).mean().item()
    assert kl_model < 0.2 < kl_uniform and kl_model < kl_uniform / 4
    assert lp[..., 1].exp().mean().item() == pytest.approx(lang.end_prob, abs=0.04)


def test_tiny_policy_cache_miss_builds_then_hit_loads_the_same_weights(tmp_path, monkeypatch):
    first = P.tiny_policy(SMALL, tmp_path)
    path = P.tiny_cache_path(SMALL, tmp_path)
    assert (path / "config.json").is_file() and first.source == str(path)

    def no_pretraining(*args, **kwargs):
        raise AssertionError("cache hit must not pretrain")

    monkeypatch.setattr(P, "_pretrain", no_pretraining)
    second = P.tiny_policy(SMALL, tmp_path)
    for (name, a), (_, b) in zip(
        first.model.state_dict().items(), second.model.state_dict().items()
    ):
        assert torch.equal(a, b), name
    other = P.TinyLMConfig(**{**SMALL.__dict__, "seed": 3})
    assert P.tiny_cache_path(other, tmp_path) != path
    with pytest.raises(AssertionError, match="must not pretrain"):
        P.tiny_policy(other, tmp_path)


def test_cache_dir_defaults_to_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("KLNOTES_CACHE", str(tmp_path))
    assert P.tiny_cache_path(SMALL).parent == tmp_path


def test_tokenizer_round_trips_words_and_pads_left(smoke_policy):
    tok = smoke_policy.tokenizer
    enc = tok(["ba be bi", "bo"], padding=True, return_tensors="pt")
    assert enc["input_ids"].tolist() == [[2, 3, 4], [tok.pad_token_id, tok.pad_token_id, 5]]
    assert tok.decode([2, 3, 4, tok.eos_token_id], skip_special_tokens=True) == "ba be bi"
    assert smoke_policy.model.training is False


def test_load_policy_reads_a_saved_folder(tmp_path, smoke_policy):
    smoke_policy.model.save_pretrained(tmp_path)
    smoke_policy.tokenizer.save_pretrained(tmp_path)
    loaded = P.load_policy(tmp_path, dtype=torch.float64)
    assert next(loaded.model.parameters()).dtype == torch.float64
    ids = torch.tensor([[2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model(input_ids=ids).logits.float(), smoke_policy.model(input_ids=ids).logits
        )
    assert loaded.tokenizer.get_vocab() == smoke_policy.tokenizer.get_vocab()


def test_load_policy_errors_name_the_problem(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        P.load_policy(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        P.load_policy(str(tmp_path))
    with pytest.raises(TypeError, match="hub name or a folder"):
        P.load_policy(3)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="HF_HUB_OFFLINE"):
        P.load_policy("klnotes-test/no-such-model")


@pytest.mark.parametrize(
    "field, value",
    [
        ("n_words", 1),
        ("n_embd", 7),
        ("end_prob", 1.0),
        ("pretrain_steps", -1),
        ("concentration", 0.0),
        ("n_layer", 2.5),
    ],
)
def test_tiny_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field if field != "n_embd" else "divisible"):
        P.TinyLMConfig(**{field: value})


def test_policy_for_scale_rejects_unknown_scales():
    with pytest.raises(ValueError, match="allowed: smoke, cpu, gpu"):
        P.policy_for_scale("tpu")


def test_gpt2_standin_has_gpt2s_tokenizer_and_loads_through_klnotes_policy(tmp_path, monkeypatch):
    from klnotes.gpt2 import policies

    path = policies.gpt2_standin(
        tmp_path / "standin", n_layer=1, n_embd=16, n_head=2, n_positions=32
    )
    monkeypatch.setenv(policies.POLICY_ENV, str(path))
    policy = policies.policy_for_scale("gpu")
    assert policy.source == str(path)
    assert policy.tokenizer("Hello world").input_ids == [15496, 995]
    assert len(policy.tokenizer) == policy.model.config.vocab_size == 50257
    assert policy.tokenizer.eos_token_id == 50256
