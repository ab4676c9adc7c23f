"""How exits are read (exit_head_input, exit_loss, multi_exit_forward), checked against the plain HF model.

Every expected value comes from the plain ``AutoModelForCausalLM`` with the same weights (its hidden states,
final norm and lm_head) or from a hand computation, never from the multi-exit model's own helpers.
"""

import pytest
import torch
import torch.nn.functional as F
import transformers as T

from conftest import tiny_config
from multiexit import AutoMultiExitModel, MultiExitConfiguration, VocabularyProjectionMode

DIRECT = VocabularyProjectionMode.SHARED_PROJECTION_DIRECT
CAST = VocabularyProjectionMode.SHARED_PROJECTION_CAST_OUTPUTS
B, L = 2, 7  # batch, sequence length


def build(layers=(2, 4), mode=None, dtype=torch.float32):
    """A tiny llama (eager attention, so attentions can be returned) and its multi-exit copy."""
    torch.manual_seed(0)
    config = tiny_config("llama")
    config.initializer_range = 0.2
    base = T.AutoModelForCausalLM.from_config(config, attn_implementation="eager").to(dtype).eval()
    model = AutoMultiExitModel.from_model(base, MultiExitConfiguration(lm_head_layer_indices=list(layers),
                                                                        vocab_projection_mode=mode)).eval()
    model.set_attn_implementation("eager")
    return base, model


def use(model, **kwargs):
    return model.set_multi_exit_config(MultiExitConfiguration(use_original_head=False, **kwargs))


def both(upper, lower):
    """A contrast function that returns both exits' logits, so each can be checked on its own."""
    return torch.stack([upper, lower])


@pytest.fixture(scope="module")
def x():
    return torch.randint(3, 128, (B, L), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def test_casts_apply_only_in_cast_mode_single_and_stacked(x):
    base, model = build(layers=(2,), mode=CAST)
    ref = base(x, output_hidden_states=True)
    normed2 = base.model.norm(ref.hidden_states[2])
    w2 = model.name_to_cast_matrix["cast_2"].weight
    cast2 = base.lm_head(normed2 @ w2.T)
    lens2 = base.lm_head(normed2)
    assert not torch.allclose(cast2, lens2, atol=1e-2)  # the cast is not (close to) the identity
    # CAST mode, stacked path (original + exit 2 in one call): exit 2 reads through its cast
    out = use(model, contrast_layer_indices="original;2", vocab_projection_mode=CAST, contrast_function=both)(x).logits
    assert torch.allclose(out[0], ref.logits, atol=1e-5) and torch.allclose(out[1], cast2, atol=1e-5)
    # DIRECT mode ignores a fitted cast: single exit and stacked path are the plain logit lens
    assert torch.allclose(use(model, output_layer_index=2, vocab_projection_mode=DIRECT)(x).logits, lens2, atol=1e-5)
    out = use(model, contrast_layer_indices="original;2", vocab_projection_mode=DIRECT, contrast_function=both)(x).logits
    assert torch.allclose(out[0], ref.logits, atol=1e-5) and torch.allclose(out[1], lens2, atol=1e-5)


@torch.no_grad()
def test_float32_cast_on_bf16_body_reads_its_input_in_float32(x):
    base, model = build(layers=(2,), mode=CAST, dtype=torch.bfloat16)
    model.name_to_cast_matrix.float()  # a float32 cast on a bf16 body: the hidden state is upcast for it
    w2 = model.name_to_cast_matrix["cast_2"].weight
    normed2 = base.model.norm(base(x, output_hidden_states=True).hidden_states[2])
    expected = base.lm_head((normed2.float() @ w2.T).to(torch.bfloat16)).float()
    out = use(model, output_layer_index=2)(x).logits
    assert torch.allclose(out.float(), expected, atol=0.1, rtol=0.02)


def test_loss_keyword_arguments_reach_every_exit_loss(x):
    base, model = build(layers=(2, 4))
    use(model, output_layer_index=2)
    with torch.no_grad():
        hidden = base(x, output_hidden_states=True).hidden_states
    heads = {l: model.name_to_lm_exit_head[f"lm_head_{l}"].weight for l in (2, 4)}
    logits = {2: base.model.norm(hidden[2]) @ heads[2].T, 4: hidden[4] @ heads[4].T}
    # num_items_in_batch (the Trainer's gradient-accumulation normaliser) divides the summed token loss
    out = model(x, labels=x, num_items_in_batch=torch.tensor(5))
    for layer in (2, 4):
        summed = F.cross_entropy(logits[layer][:, :-1].reshape(-1, 128), x[:, 1:].reshape(-1), reduction="sum")
        assert torch.allclose(out.exit_losses[layer], summed / 5, atol=1e-4), layer
    assert torch.allclose(out.loss, sum(out.exit_losses.values()))


@torch.no_grad()
def test_no_trained_exit_gives_no_loss_and_labels_absent_project_only_the_output(x):
    base, model = build(layers=(1, 2), mode=CAST)
    ref = base(x, output_hidden_states=True)
    # DIRECT mode trains no exit: labels give loss None and no per-exit losses (not an error)
    out = use(model, output_layer_index=2, vocab_projection_mode=DIRECT)(x, labels=x)
    assert out.loss is None and out.exit_losses == {}
    assert torch.allclose(out.logits, base.lm_head(base.model.norm(ref.hidden_states[2])), atol=1e-5)
    assert model.trained_exit_layers() == [] and model.trained_exit_layers(CAST) == [1, 2]  # the active mode, or the one named
    # CAST mode trains the exits its casts were fitted for (no layer-specific head exists here): one loss per cast
    # exit, each the next-token cross-entropy of the plain model's head over the cast final-normed state
    out = use(model, output_layer_index=2, vocab_projection_mode=CAST)(x, labels=x)
    assert sorted(out.exit_losses) == [1, 2]
    for layer in (1, 2):
        cast = model.name_to_cast_matrix[f"cast_{layer}"]
        logits = base.lm_head(cast(base.model.norm(ref.hidden_states[layer])))
        expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        assert torch.allclose(out.exit_losses[layer], expected, atol=1e-5), layer
    assert torch.allclose(out.loss, out.exit_losses[1] + out.exit_losses[2])
    # without labels, the trained (cast) exits are not projected: the vocabulary head sees only exit 2's rows
    rows = []
    model.lm_head.register_forward_hook(lambda _m, inputs, _out: rows.append(tuple(inputs[0].shape)))
    out = use(model, output_layer_index=2, vocab_projection_mode=CAST)(x)
    assert rows == [(B, L, 32)] and out.loss is None and out.exit_losses is None


@torch.no_grad()
def test_exit_output_returns_the_body_hidden_states_and_attentions(x):
    base, model = build(layers=(2, 4))
    use(model, output_layer_index=2)
    ref = base(x, output_hidden_states=True, output_attentions=True)
    # hidden states and attentions asked for (keyword arguments of the body) come back as the plain model's
    out = model(x, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 5 and all(torch.equal(a, b) for a, b in zip(out.hidden_states, ref.hidden_states))
    assert len(out.attentions) == 4 and all(torch.equal(a, b) for a, b in zip(out.attentions, ref.attentions))


@torch.no_grad()
@pytest.mark.parametrize("return_dict", [True, False])
def test_exit_output_takes_return_dict_and_still_answers_with_its_output(x, return_dict):
    """``return_dict`` (a keyword HF callers pass, e.g. ``return_dict=False``) does not reach the body, which would
    then return a tuple: the exit's output is the same, and indexes like a tuple (``out[0]`` is the logits)."""
    base, model = build(layers=(2, 4))
    use(model, output_layer_index=2)
    expected = base.model.norm(base(x, output_hidden_states=True).hidden_states[2]) @ model.name_to_lm_exit_head["lm_head_2"].weight.T
    out = model(x, return_dict=return_dict)
    assert torch.allclose(out.logits, expected, atol=1e-5) and out[0] is out.logits


@torch.no_grad()
@pytest.mark.parametrize("family", ["gpt_neo", "gpt2"])  # return_dict a named parameter of forward, or in **kwargs
def test_return_dict_false_gives_the_same_exit_output_in_other_families(x, family):
    torch.manual_seed(0)
    model = AutoMultiExitModel.from_config(tiny_config(family), MultiExitConfiguration(lm_head_layer_indices=[2])).eval()
    use(model, output_layer_index=2)
    assert torch.equal(model(x, return_dict=False).logits, model(x).logits)


@torch.no_grad()
def test_exit_output_cache_continues_the_sequence(x):
    base, model = build(layers=(2, 4))
    use(model, output_layer_index=2)
    ref = base(x, output_hidden_states=True)
    # the returned cache continues the sequence: the last token's exit-2 logits as from the full sequence
    prefix = model(x[:, :-1], use_cache=True)
    step = model(x[:, -1:], cache=prefix.cache)
    expected = base.model.norm(ref.hidden_states[2][:, -1:]) @ model.name_to_lm_exit_head["lm_head_2"].weight.T
    assert torch.allclose(step.logits, expected, atol=1e-5)


def test_few_rows_shortcut_keeps_subclasses_and_hooks():
    from multiexit.model.modeling import few_rows_linear

    torch.manual_seed(0)
    hidden = torch.randn(3, 8)  # 3 rows on CPU: the rows the weight @ hidden.T shortcut is for
    plain = torch.nn.Linear(8, 5)
    assert torch.allclose(few_rows_linear(plain, hidden), hidden @ plain.weight.T + plain.bias, atol=1e-6)

    class Doubled(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    # the shortcut is for a plain nn.Linear only: a subclass's own forward still runs
    doubled = Doubled(8, 5)
    assert torch.allclose(few_rows_linear(doubled, hidden), 2 * (hidden @ doubled.weight.T + doubled.bias), atol=1e-6)
    # and a module with a pre-hook (as accelerate's offloading sets) goes through its call, hook included
    seen = []
    plain.register_forward_pre_hook(lambda _module, inputs: seen.append(tuple(inputs[0].shape)))
    few_rows_linear(plain, hidden)
    assert seen == [(3, 8)]
    # accelerate's own hooks (add_hook_to_module, as device maps and offloading use) swap in their own forward and
    # mark the module with _hf_hook, registering no torch hook: such a module is called too
    from accelerate.hooks import ModelHook, add_hook_to_module

    class Recording(ModelHook):
        def pre_forward(self, module, *args, **kwargs):
            seen.append(("accelerate", tuple(args[0].shape)))
            return args, kwargs

    hooked = add_hook_to_module(torch.nn.Linear(8, 5), Recording())
    assert not hooked._forward_hooks and not hooked._forward_pre_hooks
    few_rows_linear(hooked, hidden)
    assert seen[-1] == ("accelerate", (3, 8))
