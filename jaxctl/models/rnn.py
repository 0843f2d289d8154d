"""Layered recurrent networks, optionally closing the loop through a plant.

The architecture follows `hessianfree.RNNet`, the network of DeWolf's
Hessian-free library (DeWolf 2016): layers `0..L-1` of
widths `sizes`, a nonlinearity per layer, feed-forward connections
`conns = {pre: [post, ...]}` from lower to higher layers (skip connections
allowed), and recurrence on chosen layers. Notation, for one example and
time step `t`:

    a_0(t) = act_0([x_t, observe(s_t)])                      input layer
    a_l(t) = act_l(sum_{p -> l} a_p(t) W_{p,l} + b_l + r_l(t)), l >= 1
    r_l(t) = a_l(t-1) W_{l,l}  (t > 0),   r_l(0) = h0_l      recurrent layers
    u_t    = a_{L-1}(t)                                      network output
    s_{t+1} = plant(s_t, u_t)                                plant (optional)

`x_t` is the external input (may be absent), `s_t` the plant state (any
pytree) and `observe(s_t)` the vector it feeds back (default: the state's
leaves raveled and concatenated). `h0_l` plays the role of `hessianfree`'s
"recurrent bias" applied on the first step. The whole rollout is one
`lax.scan`, so gradients, `jax.jvp` and Gauss-Newton products flow through
the plant and through the state fed back into the network: the closed loop
is differentiated exactly (the `hessianfree` library holds the fed-back
state constant).

Biases are per layer (`hessianfree` keeps one per connection; the two agree
whenever a layer has a single incoming connection).

Every function acts on one unbatched sequence; `jax.vmap` it over a batch.

References:
  J. Martens and I. Sutskever (2011), "Learning recurrent neural networks
  with Hessian-free optimization", ICML.
  I. Sutskever (2013), "Training recurrent neural networks", PhD thesis,
  ch. 6 (the network that drives the arm).
  T. DeWolf (2016), "Deep learning for control using augmented Hessian-free
  optimization", studywolf blog (the `hessianfree` library and its arm task).
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxctl.control.simulate import carry_zero
from jaxctl.models.mlp import ACTIVATIONS as _MLP_ACTIVATIONS
from jaxctl.util import checks
from jaxctl.util.checks import PyTree

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    **_MLP_ACTIVATIONS,
    "logistic": jax.nn.sigmoid,
}


class RNNSpec(NamedTuple):
    """Static description of a layered RNN (build it with `rnn_spec`).

    Attributes:
      sizes: layer widths `(n_0, ..., n_{L-1})`; `n_0` counts the external
        input plus the observed plant state.
      activations: one name from `ACTIVATIONS` per layer.
      recurrent: indices of the layers with recurrent weights.
      conns: `((pre, (post, ...)), ...)`, sorted, the feed-forward edges.
      plant: `None` or `(plant_state, u) -> plant_state`, differentiable.
      observe: `plant_state -> (n_obs,)` vector fed back to layer 0.
    """

    sizes: tuple[int, ...]
    activations: tuple[str, ...]
    recurrent: tuple[int, ...]
    conns: tuple[tuple[int, tuple[int, ...]], ...]
    plant: Callable[[PyTree, jax.Array], PyTree] | None
    observe: Callable[[PyTree], jax.Array] | None


class RNNOutputs(NamedTuple):
    """One rollout of `rnn_apply` (time on the leading axis of every leaf).

    Attributes:
      outputs: `(T, n_{L-1})`, the last layer `u_t` (torques with a plant).
      plant_states: pytree like the plant state with a leading `T` axis,
        `s_1 .. s_T` (the state after each `u_t`); `None` without a plant.
      hidden: tuple of `(T, n_l)` activations of the recurrent layers in
        `spec.recurrent` order when `return_hidden=True` (for structural
        damping), else `None`.
    """

    outputs: jax.Array
    plant_states: PyTree
    hidden: tuple[jax.Array, ...] | None


def observe_state(state: PyTree) -> jax.Array:
    """Default feedback: the plant state's leaves raveled and concatenated."""
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(state)])


def rnn_spec(sizes: Sequence[int], activations: str | Sequence[str] = "tanh", *,
             recurrent: Sequence[int] | None = None,
             conns: Mapping[int, Sequence[int]] | None = None,
             plant: Callable[[PyTree, jax.Array], PyTree] | None = None,
             observe: Callable[[PyTree], jax.Array] | None = None) -> RNNSpec:
    """Builds and validates an `RNNSpec`.

    Args:
      sizes: layer widths, at least two. With a plant, `sizes[0]` is the
        external input width plus the width of `observe(plant_state)`, and
        `sizes[-1]` the plant input (e.g. 2 torques).
      activations: a name for the hidden layers (input and output layers
        are then linear), or one name per layer. Names: `ACTIVATIONS`.
      recurrent: recurrent layer indices (default: every hidden layer).
        Layer 0 cannot be recurrent.
      conns: `{pre: [post, ...]}` with `pre < post` (default: a chain). Every
        layer after the first needs an incoming connection.
      plant: optional differentiable `(plant_state, u_t) -> plant_state`.
      observe: `plant_state -> vector` fed back to layer 0 (default
        `observe_state`); only with a plant.

    Returns:
      An `RNNSpec` (a NamedTuple: close over it, do not pass it to `jit`).

    Example:
      >>> # the reaching controller of DeWolf (2016): target (4) + arm state (4)
      >>> # in, two recurrent tanh layers with a skip connection, 2 torques out
      >>> from jaxctl.envs import arm
      >>> spec = rnn_spec([8, 32, 32, 2], conns={0: [1, 2], 1: [2], 2: [3]},
      ...                 recurrent=[1, 2], plant=lambda s, u: arm.step(s, u))
    """
    sizes = tuple(checks.check_positive_int("sizes", s) for s in sizes)
    n = len(sizes)
    if n < 2:
        raise ValueError(f"sizes must hold at least two positive widths, got {sizes}")
    if isinstance(activations, str):
        activations = ("linear",) + (activations,) * (n - 2) + ("linear",)
    activations = tuple(activations)
    if len(activations) != n:
        raise ValueError(f"activations must name one nonlinearity per layer ({n}), "
                         f"got {len(activations)}")
    for name in activations:
        if name not in ACTIVATIONS:
            raise ValueError(f"activations must be in {sorted(ACTIVATIONS)}, got {name!r}")
    recurrent = tuple(range(1, n - 1)) if recurrent is None else tuple(
        sorted({checks.check_int("recurrent", l) for l in recurrent}))
    if any(not 1 <= l < n for l in recurrent):
        raise ValueError(f"recurrent layers must be in [1, {n - 1}], got {recurrent}")
    if conns is None:
        conns = {l: [l + 1] for l in range(n - 1)}
    edges = []
    for pre, posts in sorted(conns.items()):
        pre = checks.check_int("conns", pre)
        posts = tuple(sorted({checks.check_int("conns", p) for p in posts}))
        for post in posts:
            if not 0 <= pre < post < n:
                raise ValueError(f"conns must connect a lower to a higher layer in [0, {n}), "
                                 f"got {pre} -> {post}")
        if posts:
            edges.append((int(pre), posts))
    fed = {post for _, posts in edges for post in posts}
    missing = [l for l in range(1, n) if l not in fed]
    if missing:
        raise ValueError(f"conns leaves layers {missing} without input")
    if observe is not None and plant is None:
        raise ValueError("observe needs a plant")
    if plant is not None and observe is None:
        observe = observe_state
    return RNNSpec(sizes=sizes, activations=activations, recurrent=recurrent,
                   conns=tuple(edges), plant=plant, observe=observe)


def _incoming(spec: RNNSpec) -> dict[int, list[int]]:
    back: dict[int, list[int]] = {l: [] for l in range(len(spec.sizes))}
    for pre, posts in spec.conns:
        for post in posts:
            back[post].append(pre)
    return back


def _edge(pre: int, post: int) -> str:
    return f"{pre}->{post}"


def _concat(parts: list[jax.Array]) -> jax.Array:
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def _layer_weights(spec: RNNSpec, params: PyTree) -> tuple[dict, dict]:
    """Per layer `l >= 1`: its sources `[p for p -> l]` and the stacked matrix
    `[W_{p,l}; ...; W_{l,l}]` (recurrent block last), so that
    `sum_p a_p W_{p,l} + a_l(t-1) W_{l,l} = [a_p, ..., a_l(t-1)] @ stacked`."""
    back = _incoming(spec)
    weights = {}
    for l in range(1, len(spec.sizes)):
        blocks = [params["w"][_edge(p, l)] for p in back[l]]
        if l in spec.recurrent:
            blocks.append(params["rec"][str(l)])
        weights[l] = jnp.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]
    return back, weights


def rnn_init(key: jax.Array, spec: RNNSpec, *, scale: float = 1.0,
             recurrent_scale: float = 1.0, dtype=jnp.float32) -> dict[str, dict[str, jax.Array]]:
    """Initialises the weights of `spec`.

    Feed-forward weights are normal with variance `scale^2 / fan_in` (fan-in
    summed over a layer's incoming connections); each recurrent matrix is a
    random orthogonal matrix times `recurrent_scale` (its spectral radius),
    so the untrained network neither explodes nor forgets at once. Biases
    and first-step recurrent inputs `h0` are zero.

    Args:
      key: PRNG key.
      spec: the network.
      scale: feed-forward gain.
      recurrent_scale: spectral radius of each recurrent matrix.
      dtype: parameter dtype.

    Returns:
      `{"w": {"p->l": (n_p, n_l)}, "b": {"l": (n_l,)},
        "rec": {"l": (n_l, n_l)}, "h0": {"l": (n_l,)}}`, keys as strings.

    Example:
      >>> spec = rnn_spec([1, 10, 1])
      >>> params = rnn_init(jax.random.PRNGKey(0), spec)
      >>> params["rec"]["1"].shape
      (10, 10)
    """
    back = _incoming(spec)
    keys = iter(jax.random.split(key, 1 + sum(len(p) for p in back.values()) + len(spec.recurrent)))
    w, b, rec, h0 = {}, {}, {}, {}
    for post in range(1, len(spec.sizes)):
        fan_in = sum(spec.sizes[p] for p in back[post])
        for pre in back[post]:
            w[_edge(pre, post)] = (jax.random.normal(next(keys), (spec.sizes[pre], spec.sizes[post]),
                                                     dtype) * (scale / jnp.sqrt(fan_in))).astype(dtype)
        b[str(post)] = jnp.zeros((spec.sizes[post],), dtype)
    for l in spec.recurrent:
        n = spec.sizes[l]
        q, r = jnp.linalg.qr(jax.random.normal(next(keys), (n, n), jnp.float32))
        q = q * jnp.sign(jnp.diagonal(r))  # Haar-distributed orthogonal
        rec[str(l)] = (recurrent_scale * q).astype(dtype)
        h0[str(l)] = jnp.zeros((n,), dtype)
    return {"w": w, "b": b, "rec": rec, "h0": h0}


def _check_params(spec: RNNSpec, params: Mapping[str, Mapping[str, jax.Array]]) -> None:
    back = _incoming(spec)
    for post in range(1, len(spec.sizes)):
        for pre in back[post]:
            want = (spec.sizes[pre], spec.sizes[post])
            got = jnp.shape(params["w"].get(_edge(pre, post), jnp.zeros(())))
            if got != want:
                raise ValueError(f"params['w']['{pre}->{post}'] must have shape {want}, got {got}")
        got = jnp.shape(params["b"].get(str(post), jnp.zeros(())))
        if got != (spec.sizes[post],):
            raise ValueError(f"params['b']['{post}'] must have shape ({spec.sizes[post]},), got {got}")
    for l in spec.recurrent:
        n = spec.sizes[l]
        if jnp.shape(params["rec"].get(str(l), jnp.zeros(()))) != (n, n):
            raise ValueError(f"params['rec']['{l}'] must have shape ({n}, {n})")
        if jnp.shape(params["h0"].get(str(l), jnp.zeros(()))) != (n,):
            raise ValueError(f"params['h0']['{l}'] must have shape ({n},)")


def rnn_apply(spec: RNNSpec, params: PyTree, inputs: jax.Array | None = None,
              plant_state: PyTree = None, *, length: int | None = None,
              return_hidden: bool = False) -> RNNOutputs:
    """Runs the network (and plant) over one sequence with `lax.scan`.

    Args:
      spec: the network (`rnn_spec`).
      params: from `rnn_init` (or any pytree of the same shapes).
      inputs: external inputs `(T, n_x)`, or `None` when the network sees
        only the plant state (then `length` gives `T`).
      plant_state: the initial plant state `s_0` (required with a plant).
      length: number of steps when `inputs` is `None`.
      return_hidden: also return the recurrent layers' activations.

    Returns:
      `RNNOutputs(outputs (T, n_out), plant_states (T, ...) or None,
      hidden tuple of (T, n_l) or None)`.

    Example:
      >>> spec = rnn_spec([2, 16, 2], plant=lambda s, u: s + 0.1 * u)
      >>> params = rnn_init(jax.random.PRNGKey(0), spec)
      >>> out = rnn_apply(spec, params, None, jnp.zeros(2), length=15)
      >>> out.plant_states.shape
      (15, 2)
    """
    _check_params(spec, params)
    # The network computes in its parameter dtype; integer plant states are promoted.
    net_dtype = params["b"][str(len(spec.sizes) - 1)].dtype
    if inputs is None:
        length = checks.check_positive_int("length (without inputs)", length)
        n_x = 0
    else:
        inputs = checks.as_float("inputs", inputs)
        if inputs.ndim != 2 or inputs.shape[0] == 0:
            raise ValueError(f"inputs must have shape (T, n_x) with T >= 1 (one unbatched "
                             f"sequence), got {inputs.shape}")
        if length is not None and length != inputs.shape[0]:
            raise ValueError(f"length {length} disagrees with inputs.shape[0] {inputs.shape[0]}")
        length, n_x = inputs.shape
        inputs = inputs.astype(net_dtype)
    if spec.plant is None:
        if plant_state is not None:
            raise ValueError("plant_state given but the spec has no plant")
        n_obs = 0
    else:
        if plant_state is None:
            raise ValueError("the spec has a plant: pass its initial plant_state")
        plant_state = checks.tree_as_float("plant_state", plant_state)
        n_obs = jax.eval_shape(spec.observe, plant_state).shape
        if len(n_obs) != 1:
            raise ValueError(f"observe(plant_state) must be a vector, got shape {n_obs}")
        n_obs = n_obs[0]
    if n_x + n_obs != spec.sizes[0]:
        raise ValueError(f"layer 0 has {spec.sizes[0]} units but receives {n_x} inputs + "
                         f"{n_obs} observed plant-state entries")

    acts = [ACTIVATIONS[name] for name in spec.activations]
    rec_layers = spec.recurrent
    sources, weights = _layer_weights(spec, params)

    def step(carry, xs):
        prev, state = carry
        x_t, first = xs
        parts = [] if x_t is None else [x_t]
        if spec.plant is not None:
            parts.append(spec.observe(state).astype(net_dtype))
        layer = [acts[0](jnp.concatenate(parts))]
        for l in range(1, len(spec.sizes)):
            # One matmul per layer over [a_p(t) for p -> l, a_l(t-1)]: fewer,
            # larger kernels per time step, which is what the closed loop's
            # latency (and the linearised loops of CG) is made of.
            feed = [layer[p] for p in sources[l]] + ([prev[str(l)]] if l in rec_layers else [])
            z = _concat(feed) @ weights[l] + params["b"][str(l)]
            if l in rec_layers:
                z = z + first * params["h0"][str(l)]
            layer.append(acts[l](z))
        u = layer[-1]
        new_state = None
        if spec.plant is not None:
            # The (float) initial state fixes the carry dtype (float32 plant, float64 net, ...).
            new_state = jax.tree.map(lambda n, o: n.astype(o.dtype), spec.plant(state, u), state)
        hidden = tuple(layer[l] for l in rec_layers) if return_hidden else None
        return ({str(l): layer[l] for l in rec_layers}, new_state), (u, new_state, hidden)

    # Carries typed after every input (dtype, shard_map axes, sharding): the step mixes
    # parameters, inputs and plant state, so its carry out has all their types.
    # a_l(-1) = 0, so the recurrent block adds nothing at t = 0, where h0 enters instead.
    zero = carry_zero(*jax.tree.leaves((params, inputs, plant_state)))
    init = ({str(l): jnp.zeros_like(params["h0"][str(l)]) + zero.astype(params["h0"][str(l)].dtype)
             for l in rec_layers},
            jax.tree.map(lambda leaf: leaf + zero.astype(leaf.dtype), plant_state))
    first = (jnp.arange(length) == 0).astype(net_dtype)[:, None]
    _, (u, states, hidden) = lax.scan(step, init, (inputs, first), length=length)
    return RNNOutputs(outputs=u, plant_states=states, hidden=hidden)
