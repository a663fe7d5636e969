"""Reinforcement learning: a Deep Q-Network that learns to balance gymnasium's CartPole."""
