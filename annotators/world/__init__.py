"""The shapes world (scenes of coloured shapes on a 3x3 grid) as the annotators layer knows it: the
scene model (`scene`), the exact verifier that reads scenes from pixels and from text and grades
edits and traces against them (`verifier`), and a scene annotator backend that writes traces from
what it reads in the images (`scene_backend`). The trainer's judge and reward and the data
pipeline's `demo-data` build on it."""

from annotators.world.scene import BACKGROUNDS, CELLS, COLOURS, EDITS, SHAPES, Scene, Shape, random_edit, random_scene
from annotators.world.scene_backend import SceneBackend, SceneConfig
from annotators.world.verifier import Verdict, consistency, parse_scene, read_scene, verify

__all__ = ["BACKGROUNDS", "CELLS", "COLOURS", "EDITS", "SHAPES", "Scene", "SceneBackend", "SceneConfig", "Shape",
           "Verdict", "consistency", "parse_scene", "random_edit", "random_scene", "read_scene", "verify"]
