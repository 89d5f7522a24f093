"""The parallel sampler (text and image on one denoising timeline) and its schedules."""

from trainer.sampling.sampler import (
                                      OutputSlots,
                                      ParallelSampler,
                                      Prompt,
                                      SamplerConfig,
                                      SampleResult,
                                      TrajectoryStep,
                                      draw_codes,
                                      filled,
                                      image_codes,
                                      text_ids,
)
from trainer.sampling.schedules import (
                                      StepPlan,
                                      image_schedule,
                                      image_update_steps,
                                      plan,
                                      text_schedule,
)

__all__ = ["OutputSlots", "ParallelSampler", "Prompt", "SampleResult", "SamplerConfig", "StepPlan", "TrajectoryStep",
           "draw_codes", "filled", "image_codes", "image_schedule", "image_update_steps", "plan", "text_ids", "text_schedule"]
