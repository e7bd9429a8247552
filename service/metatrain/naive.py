"""The straightforward meta-training step that public reimplementations use, kept as a yardstick.

One instance at a time, and at every optimizee step a backward pass through the
whole graph built since the last truncation (into the LSTM's weights too) just
to read ∂f/∂θ. Its meta-gradient is the same as `run_unroll`'s; only its speed
differs, which `bench.paper` measures.
"""

from __future__ import annotations

import time

import torch

from service.lopt import CoordinatewiseLSTM, init
from service.lopt.functional import step_autograd
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
        updates, state = step_autograd(config, weights, grad.reshape(-1), state)
        theta = theta + updates.view(theta.shape)
    meta_loss = meta_loss + batch.loss(theta, traj.step + unroll).mean()
    return meta_loss, Trajectory(theta, state, traj.step + unroll)


def naive_throughput(net: CoordinatewiseLSTM, family, *, instances: int, horizon: int, unroll: int,
                     seed: int = 0) -> float:
    """Optimizee steps per second of naive meta-training, one instance at a time."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    began = time.perf_counter()
    for i in range(instances):
        batch = family.sample(1, seed * 1_000_033 + i, "train")
        theta = batch.init_params()
        traj = Trajectory(theta, init(net.config, theta.numel()), 0)
        for _ in range(horizon // unroll):
            meta_loss, traj = naive_unroll(net, batch, traj, unroll)
            opt.zero_grad(set_to_none=True)
            meta_loss.backward()
            opt.step()
            traj = traj.detach()
    return instances * horizon / (time.perf_counter() - began)
