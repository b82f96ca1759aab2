"""emofast.eval: judging what a model says and what an intervention costs it.

    judge = EmotionJudge.load()                          # offline MiniLM encoder + linear head
    judge.score(replies, ["fear"] * len(replies)).accuracy
    [cost] = lm_preservation(model, neutral_texts, [steering])   # ppl and next-token KL
    choice = select_steering(model, dirs, judge, configs, val_prompts)
    recognize(model, load_dataset("emo6")).accuracy      # which emotion does a text express?

Rooms: judge (the offline emotion judge and its training), preservation (perplexity, KL,
distinct-n), control (steering selection and the steering / prompting / unsteered comparison),
recognition (the emotion-recognition task).
"""
from .control import (EmotionControl, SteeringChoice, SteeringComparison, compare_steering,
                      judged_grid, select_steering, steering_configs, steering_preservation)
from .judge import EmotionJudge, JudgeScore, train_judge
from .preservation import PreservationResult, distinct_n, lm_preservation
from .recognition import RecognitionResult, recognize

__all__ = ["EmotionControl", "EmotionJudge", "JudgeScore", "PreservationResult", "RecognitionResult",
           "SteeringChoice", "SteeringComparison", "compare_steering", "distinct_n",
           "judged_grid", "lm_preservation", "recognize", "select_steering", "steering_configs",
           "steering_preservation", "train_judge"]
