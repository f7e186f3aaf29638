r"""Networks: score networks for vector and field targets, and observation embeddings."""

from bayesinv.nets.embedding import CNNEmbedding, MLPEmbedding, NoiseEmbedding, time_embedding
from bayesinv.nets.gaussianization import Gaussianization
from bayesinv.nets.mlp import ResidualScoreMLP, ScoreMLP
from bayesinv.nets.multiscale_flow import MultiscaleFlow, VectorFlowPrior
from bayesinv.nets.unet import ScoreUNet

__all__ = ["ScoreMLP", "ResidualScoreMLP", "ScoreUNet", "MLPEmbedding", "CNNEmbedding", "NoiseEmbedding", "time_embedding", "Gaussianization",
           "MultiscaleFlow", "VectorFlowPrior"]
