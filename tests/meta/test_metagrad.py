"""The reward model's meta-gradient on a tiny transformer policy (LoRA) and reward model, in float64:
against central finite differences of the meta loss, across methods, with and without rematerialisation,
vmapped over domains versus a loop; `jax.grad` of the meta objective against the chain rule assembled by hand;
and the two losses against numpy."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metapl.bilevel import Adjoint, FirstOrder, Implicit, Unrolled, hypergradient, tree_vdot
from metapl.meta import (
    MetaConfig, agreement_outer_loss, domain_keys, domain_problem, meta_gradient, meta_objective, onpolicy_problem,
    policy_logprobs, projected_inner_loss, reward_function, reward_pair_loss, sample_rewards, shared_support,
    with_reference_logprobs,
)
from metapl.models import LoraConfig, init_head_params, init_lora, init_params, tiny
from tests.finite_diff import x64

E, P, N, Q, T, RESPONSE = 2, 2, 3, 2, 8, 4


def setup(seed=0):
    """Policy config/base/θ₀ (LoRA), reward config/φ, support [E, P, N, T] and query [E, Q, T] batches (float64)."""
    pcfg = tiny("llama", dtype="float64", param_dtype="float64").replace(
        lora=LoraConfig(rank=2, alpha=4.0, targets=("q", "v", "up")))
    rcfg = tiny("llama", dtype="float64", param_dtype="float64")
    k = jax.random.split(jax.random.key(seed), 4)
    base = init_params(pcfg, k[0])
    theta0 = init_lora(pcfg, k[1])
    # Non-zero B factors, so θ₀ is not a saddle of every direction (LoRA's usual B = 0 start is one).
    theta0 = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(k[2], x.shape, x.dtype), theta0)
    phi = init_head_params(rcfg, k[3])
    rng = np.random.default_rng(seed)
    resp = np.zeros(T, bool)
    resp[T - RESPONSE:] = True

    def seqs(*lead):
        tokens = rng.integers(1, pcfg.vocab_size, size=(*lead, T))
        return {"tokens": jnp.asarray(tokens), "attention_mask": jnp.ones((*lead, T), bool),
                "response_mask": jnp.broadcast_to(jnp.asarray(resp), (*lead, T))}

    support = seqs(E, P, N)
    prompt = rng.integers(1, pcfg.vocab_size, size=(E, Q, T - RESPONSE))
    query = {}
    for side in ("chosen", "rejected"):
        s = seqs(E, Q)
        s["tokens"] = s["tokens"].at[..., : T - RESPONSE].set(jnp.asarray(prompt))  # shared prompts
        query.update({f"{side}_{key}": v for key, v in s.items()})
    return pcfg, rcfg, base, theta0, phi, support, query


def run(cfg, seed=0, domains=None):
    pcfg, rcfg, base, theta0, phi, support, query = setup(seed)
    if domains is not None:
        support, query = (jax.tree.map(lambda x: x[domains], b) for b in (support, query))
    fn = jax.jit(functools.partial(meta_gradient, cfg=cfg, policy_config=pcfg,
                                           reward_fn=reward_function(rcfg)))
    return fn, phi, (theta0, base, support, query)


def fd_check(cfg, eps=1e-5, seed=0):
    """(relative error of <dφ, d> against the central difference of the meta loss along d, metrics)."""
    fn, phi, rest = run(cfg, seed)
    theta0, base, support, query = rest
    loss, dphi, metrics = fn(phi, theta0, base, support, query)
    leaves, tree = jax.tree.flatten(phi)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    d = tree.unflatten([jax.random.normal(kk, x.shape, x.dtype) for kk, x in zip(keys, leaves)])
    shift = lambda s: jax.tree.map(lambda p, v: p + s * eps * v, phi, d)  # noqa: E731
    numeric = (fn(shift(1.0), *rest)[0] - fn(shift(-1.0), *rest)[0]) / (2 * eps)
    analytic = tree_vdot(dphi, d)
    return float(jnp.abs(analytic - numeric) / jnp.abs(numeric)), metrics


def test_unrolled_matches_finite_differences():
    with x64():
        err, metrics = fd_check(MetaConfig(beta=0.5, beta_out=1.0, inner_steps=3, inner_lr=0.5))
        assert err < 1e-5, err
        assert float(metrics["inner_loss_last"]) < float(metrics["inner_loss_first"])


def test_unrolled_with_adam_and_bradley_terry_term_matches_finite_differences():
    with x64():
        cfg = MetaConfig(beta=0.5, beta_out=1.0, inner_steps=3, inner_optimizer="adam", inner_lr=0.05, bt_weight=0.3)
        err, metrics = fd_check(cfg)
        assert err < 1e-5, err
        assert "bt_loss" in metrics


def test_implicit_approaches_finite_differences_as_k_grows():
    """The implicit hypergradient is exact at a stationary point of the inner loss; the proximal term gives one
    that K SGD steps approach (measured here: relative errors ~5e-2, 1e-3, 2e-7 at K = 10, 100, 1000)."""
    with x64():
        errs = []
        for k in (10, 100, 1000):
            cfg = MetaConfig(beta=0.5, beta_out=1.0, inner_steps=k, inner_lr=0.1, method="implicit",
                             solver_iterations=100, prox=5.0)
            err, metrics = fd_check(cfg)
            errs.append(err)
        print("\nimplicit vs finite differences, K = 10, 100, 1000:", [f"{e:.1e}" for e in errs])
        assert errs[0] > errs[1] > errs[2]
        assert errs[2] < 1e-5
        assert float(metrics["inner_grad_norm"]) < 1e-8 and float(metrics["solver_residual"]) < 1e-5


@pytest.mark.parametrize("optimizer,lr,bt_weight", [("sgd", 0.5, 0.0), ("adam", 0.05, 0.3)])
def test_checkpointed_adjoint_and_truncated_unrolled(optimizer, lr, bt_weight):
    """jax.checkpoint per step and the hand-written adjoint loop (forward-over-reverse; with Adam, the optimiser
    state's pullback and its integer step count) give the unrolled hypergradient."""
    with x64():
        cfg = MetaConfig(beta=0.5, beta_out=1.0, inner_steps=4, inner_lr=lr, inner_optimizer=optimizer,
                         bt_weight=bt_weight)
        fn, phi, rest = run(cfg)
        plain = fn(phi, *rest)
        for option in ("checkpoint", "adjoint"):
            other = run(dataclasses.replace(cfg, **{option: True}))[0](phi, *rest)
            np.testing.assert_allclose(other[0], plain[0], rtol=1e-12)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14), other[1], plain[1])
            np.testing.assert_allclose(other[2]["inner_loss_last"], plain[2]["inner_loss_last"], rtol=1e-12)
        # truncate = K is the full unroll
        fn_t, *_ = run(dataclasses.replace(cfg, truncate=4))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14), fn_t(phi, *rest)[1],
                     plain[1])


@pytest.mark.parametrize("method", ["unrolled", "implicit", "first_order"])
def test_vmap_over_domains_equals_a_loop(method):
    with x64():
        cfg = MetaConfig(beta=0.5, beta_out=1.0, inner_steps=3, inner_lr=0.5, method=method)
        fn, phi, rest = run(cfg)
        loss, dphi, metrics = fn(phi, *rest)
        parts = [run(cfg, domains=slice(i, i + 1)) for i in range(E)]
        outs = [f(p, *r) for f, p, r in parts]
        np.testing.assert_allclose(loss, np.mean([o[0] for o in outs]), rtol=1e-10)
        mean = jax.tree.map(lambda *xs: sum(xs) / E, *[o[1] for o in outs])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-14), dphi, mean)
        np.testing.assert_allclose(metrics["query_accuracy"], np.concatenate([o[2]["query_accuracy"] for o in outs]))


def test_projected_and_agreement_losses_against_numpy():
    with x64():
        pcfg, _, base, theta0, _, support, query = setup()
        s = jax.tree.map(lambda x: x[0], support)
        rewards = jnp.asarray(np.random.default_rng(1).normal(size=(P, N)))
        loss, metrics = projected_inner_loss(theta0, rewards, s, config=pcfg, base=base, beta=0.3)
        logp = np.asarray(policy_logprobs(theta0, base, pcfg, s["tokens"].reshape(-1, T),
                                          s["attention_mask"].reshape(-1, T),
                                          s["response_mask"].reshape(-1, T))).reshape(P, N)
        w = np.exp(np.asarray(rewards) / 0.3)
        w /= w.sum(-1, keepdims=True)
        np.testing.assert_allclose(loss, -(w * logp).sum() / P, rtol=1e-12)
        np.testing.assert_allclose(metrics["effective_samples"], np.mean(1 / (w ** 2).sum(-1)), rtol=1e-12)

        q = jax.tree.map(lambda x: x[0], query)
        lp = {side: np.asarray(policy_logprobs(theta0, base, pcfg, q[f"{side}_tokens"], q[f"{side}_attention_mask"],
                                               q[f"{side}_response_mask"])) for side in ("chosen", "rejected")}
        ref = {"ref_chosen_logps": jnp.asarray(lp["chosen"] + 0.2), "ref_rejected_logps": jnp.asarray(lp["rejected"])}
        out, m = agreement_outer_loss(theta0, None, dict(q, **ref), config=pcfg, base=base, beta_out=2.0)
        margin = np.full(Q, -0.2)
        np.testing.assert_allclose(out, np.mean(np.log1p(np.exp(-2.0 * margin))), rtol=1e-12)
        assert float(m["query_accuracy"]) == 0.0


def test_meta_loss_is_the_meta_gradients_loss_without_the_gradient():
    from metapl.meta import meta_loss

    with x64():
        cfg = MetaConfig(beta=0.5, beta_out=1.0, inner_steps=3, inner_lr=0.5)
        fn, phi, (theta0, base, support, query) = run(cfg)
        loss, _, metrics = fn(phi, theta0, base, support, query)
        pcfg, rcfg = setup()[:2]
        loss_only, m = jax.jit(functools.partial(meta_loss, cfg=cfg, policy_config=pcfg, reward_fn=reward_function(
            rcfg)))(phi, theta0, base, support, query)
        np.testing.assert_allclose(loss_only, loss, rtol=1e-12)
        for key in ("query_accuracy", "inner_loss_first", "inner_loss_last", "implicit_margin"):
            np.testing.assert_allclose(m[key], metrics[key], rtol=1e-12, err_msg=key)


ONPOLICY = {"max_new_tokens": RESPONSE, "eos_id": 0, "pad_id": 0}


def with_prompts(support):
    """The support batch with the on-policy solver's prompts [E, P, T - RESPONSE] (the samples' prompt part)."""
    return dict(support, prompt_tokens=support["tokens"][:, :, 0, : T - RESPONSE],
                prompt_mask=support["attention_mask"][:, :, 0, : T - RESPONSE])


def onpolicy_run(cfg, seed=0):
    pcfg, rcfg, base, theta0, phi, support, query = setup(seed)
    support = with_prompts(support)
    fn = jax.jit(functools.partial(meta_gradient, cfg=cfg, policy_config=pcfg, reward_fn=reward_function(rcfg),
                                   onpolicy=ONPOLICY))
    return lambda p: fn(p, theta0, base, support, query, key=jax.random.PRNGKey(3)), phi


@pytest.mark.slow  # ~70 s: sampling inside the unrolled inner loop compiles slowly
def test_onpolicy_unrolled_matches_finite_differences():
    """Samples are drawn under stop_gradient; a perturbation of 1e-5 does not move a sampled token (almost
    surely), so central differences of the K-step meta loss measure exactly what the unrolled method computes."""
    with x64():
        cfg = MetaConfig(beta=0.5, beta_out=1.0, inner_steps=2, inner_lr=0.5, inner_solver="onpolicy",
                         onpolicy_samples=2)
        fn, phi = onpolicy_run(cfg)
        loss, dphi, metrics = fn(phi)
        assert float(jnp.sqrt(tree_vdot(dphi, dphi))) > 0
        leaves, tree = jax.tree.flatten(phi)
        keys = jax.random.split(jax.random.key(7), len(leaves))
        d = tree.unflatten([jax.random.normal(kk, x.shape, x.dtype) for kk, x in zip(keys, leaves)])
        eps = 1e-5
        shift = lambda s: jax.tree.map(lambda p, v: p + s * eps * v, phi, d)  # noqa: E731
        numeric = (fn(shift(1.0))[0] - fn(shift(-1.0))[0]) / (2 * eps)
        err = float(jnp.abs(tree_vdot(dphi, d) - numeric) / jnp.abs(numeric))
        assert err < 1e-5, err
        # the adjoint loop takes the custom inner gradient's vjp (its Jacobian is not symmetric) and agrees
        _, d_adj, _ = onpolicy_run(dataclasses.replace(cfg, adjoint=True))[0](phi)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14), d_adj, dphi)
        # first-order and implicit run on the same problem and give finite hypergradients
        for method in ("first_order", "implicit"):
            _, d2, _ = onpolicy_run(dataclasses.replace(cfg, method=method))[0](phi)
            assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(d2)), method


def chain_rule_by_hand(cfg, pcfg, rcfg, phi, theta0, base, support, query):
    """The projected solver's meta-gradient assembled by hand: each domain's hypergradient with respect to its
    support rewards (`metapl.bilevel.hypergradient`, vmapped), pulled back through r_φ by `jax.vjp`, plus λ times
    the Bradley–Terry gradient."""
    reward_fn = reward_function(rcfg)
    query = with_reference_logprobs(theta0, base, pcfg, query)
    problem = domain_problem(cfg, pcfg, base, theta0)
    rewards, pullback = jax.vjp(lambda p: sample_rewards(reward_fn, p, support), phi)
    _, d_rewards, _ = jax.vmap(lambda r, s, q: hypergradient(problem, r, theta0, s, q, method=cfg.method,
                                                             **cfg.method_options()))(rewards, support, query)
    (dphi,) = pullback(d_rewards / E)
    pooled = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), query)
    bt_grad = jax.grad(lambda p: reward_pair_loss(reward_fn, p, pooled)[0])(phi)
    return jax.tree.map(lambda a, b: a + cfg.bt_weight * b, dphi, bt_grad)


@pytest.mark.parametrize("method,options", [("unrolled", {"bt_weight": 0.3}), ("unrolled", {"adjoint": True}),
                                            ("implicit", {"prox": 5.0, "inner_lr": 0.1}), ("first_order", {})])
def test_meta_objective_gradient_is_the_chain_rule_by_hand(method, options):
    with x64():
        cfg = MetaConfig(**{"beta": 0.5, "beta_out": 1.0, "inner_steps": 3, "inner_lr": 0.5, "method": method,
                            **options})
        pcfg, rcfg, base, theta0, phi, support, query = setup()
        args = (phi, theta0, base, support, query)
        grad = jax.jit(jax.grad(functools.partial(meta_objective, cfg=cfg, policy_config=pcfg,
                                                  reward_fn=reward_function(rcfg)), has_aux=True))
        dphi, metrics = grad(*args)
        want = jax.jit(functools.partial(chain_rule_by_hand, cfg, pcfg, rcfg))(*args)
        assert float(jnp.sqrt(tree_vdot(want, want))) > 0
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14), dphi, want)
        if method == "implicit":  # the linear solves' report, in the forward metrics
            assert float(metrics["solver_breakdown"]) == 0.0 and float(metrics["solver_iterations"]) >= 1
            assert float(metrics["solver_residual"]) < 1e-5 and "inner_grad_norm" in metrics
        else:
            assert not {"solver_breakdown", "solver_iterations"} & set(metrics)


def test_implicit_metrics_report_a_breakdown():
    """With inner_lr·prox = 2.5 > 2 the inner steps diverge; at their θ_K the inner Hessian is indefinite and CG
    meets negative curvature before its 20 iterations: the metrics say so."""
    with x64():
        cfg = MetaConfig(beta=0.5, beta_out=1.0, inner_steps=3, inner_lr=0.5, method="implicit", prox=5.0)
        fn, phi, rest = run(cfg)
        _, _, metrics = fn(phi, *rest)
        assert float(metrics["solver_breakdown"]) == 1.0 and float(metrics["solver_iterations"]) < 20
        assert float(metrics["solver_residual"]) > 1.0 and float(metrics["inner_grad_norm"]) > 1.0


def test_meta_config_maps_methods_to_strategies():
    assert MetaConfig().strategy() == Unrolled()
    assert MetaConfig(checkpoint=True, truncate=2).strategy() == Unrolled(checkpoint=True, truncate=2)
    assert MetaConfig(adjoint=True, truncate=2).strategy() == Adjoint(truncate=2)
    assert MetaConfig(method="implicit", solver="neumann", solver_iterations=7, damping=0.1, inner_lr=0.3
                      ).strategy() == Implicit(solver="neumann", iterations=7, damping=0.1, neumann_step_size=0.3)
    assert MetaConfig(method="first_order", first_order_scale=2.0).strategy() == FirstOrder(scale=2.0)


@pytest.mark.slow  # sampling inside the inner loop compiles slowly
@pytest.mark.parametrize("method", ["unrolled", "implicit"])
def test_onpolicy_meta_objective_gradient_is_the_mean_of_the_domains_hypergradients(method):
    """On-policy: φ is every domain's meta-parameter; the meta-gradient is the mean of the domains' hypergradients
    in φ (`metapl.bilevel.hypergradient` on each domain's problem, one at a time, with its own keys)."""
    with x64():
        cfg = MetaConfig(beta=0.5, beta_out=1.0, inner_steps=2, inner_lr=0.5, inner_solver="onpolicy",
                         onpolicy_samples=2, method=method, prox=1.0)
        pcfg, rcfg, base, theta0, phi, support, query = setup()
        support, key = with_prompts(support), jax.random.PRNGKey(3)
        kwargs = dict(cfg=cfg, policy_config=pcfg, reward_fn=reward_function(rcfg), onpolicy=ONPOLICY)
        dphi, _ = jax.jit(jax.grad(functools.partial(meta_objective, **kwargs), has_aux=True))(
            phi, theta0, base, support, query, key=key)
        problem = onpolicy_problem(cfg, pcfg, base, theta0, reward_function(rcfg), ONPOLICY)
        queries = with_reference_logprobs(theta0, base, pcfg, query)
        one_domain = jax.jit(lambda p, steps, q: hypergradient(problem, p, theta0, steps, q, method=cfg.strategy(),
                                                               per_step_batches=True)[1])
        parts = []
        for i, k in enumerate(domain_keys(key, E)):
            steps = {"prompt_tokens": jnp.stack([support["prompt_tokens"][i]] * cfg.inner_steps),
                     "prompt_mask": jnp.stack([support["prompt_mask"][i]] * cfg.inner_steps),
                     "key": jax.random.split(k, cfg.inner_steps)}
            parts.append(one_domain(phi, steps, jax.tree.map(lambda x, i=i: x[i], queries)))
        want = jax.tree.map(lambda *xs: sum(xs) / E, *parts)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14), dphi, want)


def shared_layout(support, query):
    """The same support samples and query pairs in the shared-prefix layout (each prompt once)."""
    tp = T - RESPONSE
    both = lambda k: jnp.stack([query[f"chosen_{k}"][..., tp:], query[f"rejected_{k}"][..., tp:]], axis=-2)  # noqa: E731
    return shared_support(support, tp), {
        "prompt_tokens": query["chosen_tokens"][..., :tp], "prompt_mask": query["chosen_attention_mask"][..., :tp],
        "response_tokens": both("tokens"), "response_mask": both("response_mask")}


@pytest.mark.parametrize("solver", ["projected", pytest.param("onpolicy", marks=pytest.mark.slow)])
def test_shared_prefix_layout_gives_the_same_meta_gradient(solver):
    """The meta loss and its gradient with support samples and query pairs in the shared-prefix layout (and, on
    policy, each prompt prefilled once for its samples) equal those of one row per sequence, in float64."""
    with x64():
        cfg = MetaConfig(beta=0.5, beta_out=1.0, inner_steps=2, inner_lr=0.5, inner_solver=solver,
                         onpolicy_samples=2, bt_weight=0.3)
        pcfg, rcfg, base, theta0, phi, support, query = setup()
        tp = T - RESPONSE  # as sampled: the N samples of a prompt start with that prompt
        support = dict(support, tokens=support["tokens"].at[..., :tp].set(support["tokens"][..., :1, :tp]))
        shared_support_, shared_query = shared_layout(support, query)
        kwargs = dict(cfg=cfg, policy_config=pcfg, reward_fn=reward_function(rcfg), key=jax.random.PRNGKey(3))
        loss_rows, d_rows, m_rows = meta_gradient(phi, theta0, base, with_prompts(support), query,
                                                  onpolicy=ONPOLICY, **kwargs)
        loss_shared, d_shared, m_shared = meta_gradient(phi, theta0, base, shared_support_, shared_query,
                                                        onpolicy=dict(ONPOLICY, shared_prefix=True), **kwargs)
        np.testing.assert_allclose(loss_shared, loss_rows, rtol=1e-10)
        np.testing.assert_allclose(m_shared["query_accuracy"], m_rows["query_accuracy"])
        assert float(jnp.sqrt(tree_vdot(d_rows, d_rows))) > 0
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-13), d_shared, d_rows)
