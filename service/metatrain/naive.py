"""The straightforward meta-training step that public reimplementations use, kept as a yardstick.

At every optimizee step a backward pass through the whole graph built since the last truncation (into
the optimizer's weights too) just to read ∂f/∂θ. Its meta-gradient is the same as `run_unroll`'s; only
its speed differs, which `bench.metatrain` measures on the same batch of instances.
"""

from __future__ import annotations

import torch

from service.lopt import CoordinatewiseLSTM
from service.lopt.functional import step
from service.metatrain.unroll import Trajectory
from service.tasks.base import TaskBatch


def naive_unroll(net: CoordinatewiseLSTM, batch: TaskBatch, traj: Trajectory, unroll: int) -> tuple[
        torch.Tensor, Trajectory]:
    theta, state = traj.theta, traj.state
    if not theta.requires_grad:
        theta = theta.detach().requires_grad_()
    config = net.config
    weights = net.weights()
    meta_loss = theta.new_zeros(())
    for t in range(unroll):
        theta.retain_grad()
        loss = batch.loss(theta, traj.step + t)
        loss.sum().backward(retain_graph=True)  # runs through the whole unroll, into φ as well
        grad = theta.grad.detach().clone()
        net.zero_grad(set_to_none=True)
        if t > 0:
            meta_loss = meta_loss + loss.mean()
        updates, state = step(config, weights, grad.reshape(-1), state)
        theta = theta + updates.view(theta.shape)
    meta_loss = meta_loss + batch.loss(theta, traj.step + unroll).mean()
    return meta_loss, Trajectory(theta, state, traj.step + unroll)
