"""ParaRL: trajectory-level GRPO with CLIP rewards, rollouts on Ray actors, a DeepSpeed learner."""
