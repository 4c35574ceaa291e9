"""W1 family: tasks with known optimal plans (MinFunnel, max-min nets, radial scaling, Gaussian shift) and the
dual critics and maximin solvers that estimate W1 on them."""
