# Reference values for tests/unit/test_optim.c (PyTorch 1.13, float32 CPU, foreach=False).
# p0[i] = ((i % 5) - 2) * 0.375, g_t[i] = (((7*i + 3*t) % 11) - 5) / 8 (exact in float32),
# 5 steps of each configuration; prints p after every step as C initialisers.
import torch

N, T = 6, 5
def p0(): return torch.tensor([((i % 5) - 2) * 0.375 for i in range(N)], dtype=torch.float32)
def grad(t): return torch.tensor([(((7 * i + 3 * t) % 11) - 5) / 8 for i in range(N)], dtype=torch.float32)

configs = [
    ("sgd_plain", lambda p: torch.optim.SGD([p], lr=0.1)),
    ("sgd_mom", lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9)),
    ("sgd_mom_wd_damp", lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.1)),
    ("sgd_nesterov_wd", lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adam", lambda p: torch.optim.Adam([p], lr=0.01)),
    ("adam_wd", lambda p: torch.optim.Adam([p], lr=0.01, weight_decay=0.1)),
    ("adamw_wd", lambda p: torch.optim.AdamW([p], lr=0.01, weight_decay=0.1)),
    ("adamw_default", lambda p: torch.optim.AdamW([p])),
]
for name, make in configs:
    p = p0().requires_grad_()
    opt = make(p)
    rows = []
    for t in range(T):
        p.grad = grad(t)
        opt.step()
        rows.append(", ".join("%.9gf" % v for v in p.detach().tolist()))
    print("static const float ref_%s[%d][%d] = {" % (name, T, N))
    for r in rows: print("    {%s}," % r)
    print("};")

# Schedules: the lr PyTorch's schedulers give at each epoch (base lr 0.1).
def sched_lrs(make, n):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    s = make(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    return out
for name, make, n in [
    ("steplr", lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5), 8),
    ("cosine", lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=0.01), 11),
    ("warmup", lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=1 / 4, total_iters=3), 6),
]:
    print("static const double ref_%s[%d] = {%s};" % (name, n, ", ".join("%.17g" % v for v in sched_lrs(make, n))))
