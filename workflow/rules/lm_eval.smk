# Stage 6: lm-eval benchmarks of each model's original head, single exits and ACD pairs.
