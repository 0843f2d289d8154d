"""A policy's sampling noise drawn outside the rollout's scan.

`jaxctl.control.rl.rollout(..., noise=noise)` draws `noise(key_t)` for all T
steps in one vectorised call before its scan and hands it to `act`: on CPU
every PRNG call inside a scan body is a loop of its own (threefry's five
rounds), about 5 us a step, several times the cost of CartPole's dynamics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def policy_sampler(policy, env, env_params):
    """`(act, noise)` for `rollout`: the policy's noise drawn before the rollout's scan.

    A softmax policy samples `argmax(log pi(. | s) + z)` with Gumbel noise
    `z` (the Gumbel-max trick, the law of `Policy.sample`); drawn for all
    steps at once, no PRNG call remains inside the scan (about 5 us a step
    each on CPU). Other policies keep `Policy.sample` and `noise=None`.

    Example:
      >>> import gymnax
      >>> from jaxctl.models.policies import categorical_policy
      >>> env, env_params = gymnax.make("CartPole-v1")
      >>> policy = categorical_policy(4, 2)
      >>> act, noise = policy_sampler(policy, env, env_params)
      >>> params = policy.init(jax.random.PRNGKey(0))
      >>> int(act(params, noise(jax.random.PRNGKey(1)), jnp.zeros(4))) in (0, 1)
      True
    """
    space = env.action_space(env_params)
    if not hasattr(space, "n"):
        return policy.sample, None
    actions = jnp.arange(int(space.n))

    def noise(key):
        return jax.random.gumbel(key, actions.shape)

    def act(params, z, obs):
        log_probs = jax.vmap(policy.log_prob, in_axes=(None, None, 0))(params, obs, actions)
        return jnp.argmax(log_probs + z.astype(log_probs.dtype)).astype(jnp.int32)

    return act, noise
