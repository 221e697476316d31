"""The feature contract of DESIGN.md as constants, shared by every part (this module is torch-free).

A feature row holds the generic score, the 176-d aesthetic feature, the 10 AADB attributes and the
10 content probabilities. PAM regresses offsets on x = [attributes, content] (20-d); Active-PAM
measures distances on v = [w_aes * aes_feat, aes_score] (177-d).
"""

from __future__ import annotations

import numpy as np

ATTRIBUTE_NAMES: tuple[str, ...] = ("IC", "OE", "GL", "CH", "VC", "DoF", "RoT", "BE", "RE", "SY")
N_ATTRIBUTES = len(ATTRIBUTE_NAMES)
N_CONTENT = 10
AES_FEAT_DIM = 176
PAM_INPUT_DIM = N_ATTRIBUTES + N_CONTENT  # x of eq. 3
SCORE_MIN, SCORE_MAX = 1.0, 5.0
W_AES_PAPER = 0.001  # the paper's balance between aes_feat and aes_score in v

# Output names of the fused scoring graph and of the feature backends, in contract order.
FEATURE_NAMES: tuple[str, ...] = ("aes_score", "aes_feat", "attributes", "content")
FEATURE_DIMS: dict[str, int] = {"aes_score": 1, "aes_feat": AES_FEAT_DIM,
                                "attributes": N_ATTRIBUTES, "content": N_CONTENT}


def pam_input(attributes: np.ndarray, content: np.ndarray) -> np.ndarray:
    """x = [attributes, content] as float64 [N, 20]."""
    attributes = np.asarray(attributes, dtype=np.float64).reshape(-1, N_ATTRIBUTES)
    content = np.asarray(content, dtype=np.float64).reshape(-1, N_CONTENT)
    return np.hstack([attributes, content])


def visual_vector(aes_feat: np.ndarray, aes_score: np.ndarray, w_aes: float = W_AES_PAPER) -> np.ndarray:
    """v = [w_aes * aes_feat, aes_score] as float64 [N, 177] (Algorithm 1's input)."""
    aes_feat = np.asarray(aes_feat, dtype=np.float64).reshape(-1, AES_FEAT_DIM)
    aes_score = np.asarray(aes_score, dtype=np.float64).reshape(-1, 1)
    return np.hstack([w_aes * aes_feat, aes_score])
