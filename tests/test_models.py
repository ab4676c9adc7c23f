"""Multi-exit models on tiny random models of every supported family."""

import json

import pytest
import torch
from torch import nn
import transformers as T
from safetensors.torch import save_file

from conftest import FAMILIES, tiny_config
from multiexit import AutoMultiExitModel, MultiExitConfiguration, VocabularyProjectionMode
from multiexit.model.architectures import SUPPORTED_ARCHITECTURES
from multiexit.model.modeling import few_rows_linear, head_name

DIRECT = VocabularyProjectionMode.SHARED_PROJECTION_DIRECT
CAST = VocabularyProjectionMode.SHARED_PROJECTION_CAST_OUTPUTS


def build(family, layers=(2, 4), mode=None, seed=0, init=0.2):
    torch.manual_seed(seed)
    config = tiny_config(family)
    config.initializer_range = init
    base = T.AutoModelForCausalLM.from_config(config).eval()
    mec = MultiExitConfiguration(lm_head_layer_indices=list(layers), vocab_projection_mode=mode)
    model = AutoMultiExitModel.from_model(base, mec).eval()
    return base, model


def use(model, **kwargs):
    model.set_multi_exit_config(MultiExitConfiguration(use_original_head=False, **kwargs))
    return model


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


def reference_final(base, family):
    """The plain HF model's own final transform, named by each class's attributes (not through our spec table)."""
    if family in ("gpt2", "gpt_neo", "gptj"):
        return base.transformer.ln_f
    if family == "gpt_neox":
        return base.gpt_neox.final_layer_norm
    if family in ("opt", "opt_proj"):
        decoder = base.model.decoder
        project = decoder.project_out if decoder.project_out is not None else nn.Identity()
        return lambda hidden: project(decoder.final_layer_norm(hidden))
    return base.model.norm


def reference_softcap(base, logits):
    """Gemma 2/3's final logit soft-capping, from the config value and the formula in the model card."""
    cap = getattr(base.config, "final_logit_softcapping", None)
    return logits if cap is None else cap * torch.tanh(logits / cap)


@torch.no_grad()
def test_original_head_and_exits_match_hand_computation(family):
    base, model = build(family)
    x = torch.randint(3, 128, (2, 9))
    ref = base(x, output_hidden_states=True)
    assert torch.equal(model(x).logits, ref.logits)

    top = model.num_exit_layers
    assert top == 4 and len(ref.hidden_states) == top + 1
    final = reference_final(base, family)
    # the last hidden state is already normed: the plain head on it gives the plain logits
    assert torch.allclose(reference_softcap(base, base.lm_head(ref.hidden_states[top])), ref.logits, atol=1e-5)
    # logit lens at the top layer is exactly the original head
    assert torch.allclose(use(model, output_layer_index=top, vocab_projection_mode=DIRECT)(x).logits, ref.logits, atol=1e-5)
    # exits below the top: the plain model's final norm (and OPT's project_out), then its head
    normed = final(ref.hidden_states[2])
    lens = reference_softcap(base, base.lm_head(normed))
    assert torch.allclose(use(model, output_layer_index=2, vocab_projection_mode=DIRECT)(x).logits, lens, atol=1e-5)
    head = model.name_to_lm_exit_head[head_name(2)].weight
    assert torch.allclose(use(model, output_layer_index=2)(x).logits, reference_softcap(base, normed @ head.T), atol=1e-5)
    # the top-layer trained head reads the already-normed last state (no second norm)
    head4 = model.name_to_lm_exit_head[head_name(4)].weight
    assert torch.allclose(use(model, output_layer_index=4)(x).logits,
                          reference_softcap(base, ref.hidden_states[4] @ head4.T), atol=1e-5)


def test_every_claimed_family_is_tested():
    """Every architecture the README lists has a tiny config in FAMILIES (and so the tests above)."""
    claimed = {"gpt2", "gpt_neo", "gptj", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
               "phi3", "olmo2", "gpt_neox", "opt"}
    tested = {tiny_config(f).model_type for f in FAMILIES}
    assert claimed <= tested, sorted(claimed - tested)
    assert claimed == set(SUPPORTED_ARCHITECTURES), sorted(claimed ^ set(SUPPORTED_ARCHITECTURES))
    opt = tiny_config("opt_proj")
    assert opt.word_embed_proj_dim != opt.hidden_size  # project_out is a real map, not an identity-shaped one
    assert tiny_config("gemma2").final_logit_softcapping


@torch.no_grad()
def test_contrast_output_equals_contrast_of_exits(family):
    _, model = build(family)
    x = torch.randint(3, 128, (2, 6))
    upper = model(x).logits
    lower = use(model, output_layer_index=2)(x).logits
    acd = use(model, contrast_layer_indices="original;2", contrast_alpha=0.3)(x).logits
    from multiexit import calculate_contrasted_logits

    assert torch.allclose(acd, calculate_contrasted_logits(upper, lower, alpha=0.3), atol=1e-5)


def _left_pad(prompts, pad_id=0):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox", "gemma3"])
@pytest.mark.parametrize("setting", ["greedy", "acd", "beam"])
def test_batched_left_padded_generation_equals_single(family, setting):
    _, model = build(family, init=0.5)
    if setting == "acd":
        use(model, contrast_layer_indices="original;2")
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    if setting == "beam":
        kwargs["num_beams"] = 3
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (3, 7, 5)]
    ids, mask = _left_pad(prompts)
    with torch.no_grad():
        batched = model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, ids.shape[1]:]
        for i, p in enumerate(prompts):
            single = model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), **kwargs)
            assert single[0, len(p):].tolist() == batched[i].tolist(), f"prompt {i}"


@torch.no_grad()
def test_generation_projects_only_needed_exits_at_last_position():
    _, model = build("llama", layers=(1, 2, 3, 4))
    use(model, contrast_layer_indices="original;2")
    calls = {}

    def record(name):
        def hook(_m, inputs, _out):
            calls.setdefault(name, []).append(inputs[0].shape[1])
        return hook

    for name, head in model.name_to_lm_exit_head.items():
        head.register_forward_hook(record(name))
    model.lm_head.register_forward_hook(record("original"))
    x = torch.randint(3, 128, (2, 10))
    model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert set(calls) == {"original", "lm_head_2"}
    assert all(n == 1 for n in calls["original"] + calls["lm_head_2"]), calls  # last position only, prefill included
    assert len(calls["lm_head_2"]) == 4


def test_labels_give_sum_of_exit_losses_and_only_heads_train():
    _, model = build("gpt2", layers=(2, 3, 4))
    use(model, contrast_layer_indices="4;2")
    model.freeze_base_model()
    x = torch.randint(3, 128, (2, 8))
    out = model(x, labels=x)
    assert set(out.exit_losses) == {2, 3, 4}
    assert torch.allclose(out.loss, sum(out.exit_losses.values()))
    ce = torch.nn.functional.cross_entropy
    for layer, loss in out.exit_losses.items():
        logits = use(model, output_layer_index=layer)(x).logits
        assert torch.allclose(loss, ce(logits[:, :-1].reshape(-1, 128), x[:, 1:].reshape(-1)), atol=1e-5)
    out.loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trainable == {f"name_to_lm_exit_head.lm_head_{l}.weight" for l in (2, 3, 4)}


def test_save_load_round_trip(tmp_path):
    _, model = build("llama", layers=(1, 3))
    use(model, contrast_layer_indices="original;1")
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["lm_head_layer_indices"] == [1, 3]
    assert saved["vocab_projection_mode"] == "LAYER_SPECIFIC_PROJECTION"
    assert "contrast_layer_indices" not in saved  # runtime choice, not stored
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoMultiExitModel.from_pretrained(
        tmp_path, MultiExitConfiguration(use_original_head=False, contrast_layer_indices="original;1")
    ).eval()
    x = torch.randint(3, 128, (1, 7))
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, model(x).logits, atol=1e-6)
    with pytest.raises(ValueError, match="contrast_layer_indices: layer 2 has no exit head"):
        loaded.set_multi_exit_config(MultiExitConfiguration(use_original_head=False, contrast_layer_indices="original;2"))
    with pytest.raises(ValueError, match="lm_head_layer_indices: checkpoint already has exits"):
        AutoMultiExitModel.from_pretrained(tmp_path, MultiExitConfiguration(lm_head_layer_indices=[2]))


def test_paper_checkpoint_format_loads(tmp_path, gpt2_tokenizer):
    """The released IBM checkpoints: architectures MultiHeadGPT2, exits name_to_lm_exit_head.lm_head_{l}.weight."""
    torch.manual_seed(3)
    config = T.GPT2Config(n_layer=4, n_embd=32, n_head=2, n_positions=64, vocab_size=len(gpt2_tokenizer))
    base = T.GPT2LMHeadModel(config).eval()
    weights = {k: v.contiguous() for k, v in base.state_dict().items()}
    heads = {l: torch.randn(config.vocab_size, 32) * 0.1 for l in (4, 2)}
    for l, w in heads.items():
        weights[f"name_to_lm_exit_head.lm_head_{l}.weight"] = w
    weights.pop("lm_head.weight", None)  # tied to wte in GPT-2 checkpoints
    save_file(weights, tmp_path / "model.safetensors")
    cfg = config.to_dict()
    cfg.update(architectures=["MultiHeadGPT2"], lm_head_layer_indices=[4, 2])
    (tmp_path / "config.json").write_text(json.dumps(cfg))

    model = AutoMultiExitModel.from_pretrained(tmp_path).eval()
    assert model.exit_head_layers == [4, 2]
    x = gpt2_tokenizer("The benefits of bad advice", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = base(x, output_hidden_states=True)
        assert torch.allclose(model(x).logits, ref.logits, atol=1e-5)
        exit2 = use(model, output_layer_index=2)(x).logits
        assert torch.allclose(exit2, base.transformer.ln_f(ref.hidden_states[2]) @ heads[2].T, atol=1e-5)
        exit4 = use(model, output_layer_index=4)(x).logits
        assert torch.allclose(exit4, ref.hidden_states[4] @ heads[4].T, atol=1e-5)


@torch.no_grad()
def test_cast_matrices_are_used(tmp_path):
    _, model = build("gpt2", layers=(1, 2), mode=CAST)
    assert model.cast_layers == [1, 2] and model.exit_head_layers == []
    with torch.no_grad():
        model.name_to_cast_matrix["cast_2"].weight.copy_(torch.eye(32) * 2)
    x = torch.randint(3, 128, (1, 5))
    ref = model.base_model(x, output_hidden_states=True)
    out = use(model, output_layer_index=2)(x).logits
    expected = model.lm_head(2 * model.transformer.ln_f(ref.hidden_states[2]))  # GPT-2's own norm and head
    assert torch.allclose(out, expected, atol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = AutoMultiExitModel.from_pretrained(tmp_path, MultiExitConfiguration(use_original_head=False, output_layer_index=2))
    assert torch.allclose(loaded(x).logits, out, atol=1e-5)


def test_model_level_errors():
    _, model = build("gpt2", layers=(2,))
    with pytest.raises(ValueError, match="output_layer_index: layer 9 is outside 1..4"):
        use(model, output_layer_index=9)
    with pytest.raises(ValueError, match="output_layer_index: layer 3 has no exit head"):
        use(model, output_layer_index=3)
    use(model, output_layer_index=3, vocab_projection_mode=DIRECT)  # logit lens: every layer readable
    with pytest.raises(ValueError, match="lm_head_layer_indices: layers \\[7\\] are outside 1..4"):
        AutoMultiExitModel.from_config(tiny_config("gpt2"), MultiExitConfiguration(lm_head_layer_indices=[7]))
    bad = T.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64, is_decoder=True)
    with pytest.raises(ValueError, match="unsupported architecture model_type='bert'; supported: .*gpt2.*llama"):
        AutoMultiExitModel.from_config(bad)
    assert {"gpt2", "gpt_neo", "llama", "mistral", "qwen2", "gpt_neox", "opt", "gemma3_text"} <= set(SUPPORTED_ARCHITECTURES)


def test_trainer_runs_on_exit_heads(tmp_path):
    from torch.utils.data import Dataset

    _, model = build("gpt2", layers=(2, 4), init=0.02)
    use(model, output_layer_index=2)
    model.freeze_base_model()
    model.train()

    class Repeat(Dataset):
        def __len__(self):
            return 32

        def __getitem__(self, i):
            ids = torch.arange(3, 19) + (i % 4)
            return {"input_ids": ids, "labels": ids}

    args = T.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=12, learning_rate=5e-2,
                               report_to=[], logging_steps=1, save_strategy="no", use_cpu=True, disable_tqdm=True)
    frozen_before = model.transformer.h[0].mlp.c_fc.weight.clone()
    trainer = T.Trainer(model=model, args=args, train_dataset=Repeat())
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0]
    assert torch.equal(model.transformer.h[0].mlp.c_fc.weight, frozen_before)


@torch.no_grad()
def test_shared_head_exits_are_projected_in_one_stacked_call():
    _, model = build("llama", layers=(2,))
    calls = []
    projection = model.original_head_logits

    def record(hidden):
        calls.append(tuple(hidden.shape))
        return projection(hidden)

    model.original_head_logits = record
    use(model, contrast_layer_indices="original;2", vocab_projection_mode=DIRECT)
    x = torch.randint(3, 128, (3, 6))
    model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert calls == [(6, 1, 32)] * 3  # original + exit 2 stacked on the batch axis, last position only


@torch.no_grad()
def test_few_rows_linear_equals_the_module_and_respects_hooks():
    torch.manual_seed(0)
    for bias in (False, True):
        linear = nn.Linear(32, 500, bias=bias)
        for shape in [(1, 32), (3, 1, 32), (2, 5, 32), (2, 40, 32)]:  # one row, few rows, many rows (module path)
            hidden = torch.randn(shape)
            out = few_rows_linear(linear, hidden)
            assert out.shape == (*shape[:-1], 500) and out.is_contiguous()
            assert torch.allclose(out, linear(hidden), atol=1e-5)
    seen = []
    linear.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].shape))
    few_rows_linear(linear, torch.randn(3, 32))
    assert seen == [(3, 32)]  # a hooked module (e.g. accelerate offloading) is called, not bypassed
