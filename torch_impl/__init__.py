"""PyTorch implementations (eager nn.Module, torch.optim, DataLoader)."""
