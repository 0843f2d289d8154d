"""Layer 4, the headline experiments as library code (the `jaxctl` commands run them).

- `reach_model`, `reach_train`: the recurrent network trained by Hessian-free
  through the arm's closed loop (DeWolf 2016; Sutskever 2013);
- `npg_sessions`: vmapped natural-policy-gradient sessions on gymnax
  (DeWolf 2018; Rajeswaran et al. 2017);
- `mbrl`, `mbrl_pendulum`, `mbrl_mujoco`: learned dynamics + MPC with data
  aggregation (Nagabandi et al. 2018);
- `aggregation`, `aggregation_study`: N gymnasium environments planned in one
  batched call per step, seeds run round by round (Nagabandi et al. 2018);
- `npg_mujoco`: linear-policy NPG on gymnasium MuJoCo vector environments
  (Rajeswaran et al. 2017);
- `spiking_digits`, `spiking_digits_study`: a rate conv net converted to
  spiking neurons on the 8x8 digits (DeWolf 2020);
- `spiking_cartpole`: an NPG-trained ReLU policy run as spiking neurons in
  closed loop with CartPole (DeWolf 2020; DeWolf 2018);
- `policy_noise`: a policy's sampling noise drawn before the rollout's scan
  (Gumbel-max for softmax policies);
- `progress`: the progress bar their loops show.

One idiom throughout: a `NamedTuple` of settings (`ReachSettings`,
`NPGSettings`, `MBRLSettings`) builds a trainer (`ReachTrainer`,
`SessionTrainer`, `ModelTrainer`) that compiles once, gives an
`initial_state(...)` and advances it with `run(state, ..., callback)`,
calling `callback(state, done, metrics)` after each unit of work.
"""
