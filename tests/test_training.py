import numpy as np
import pytest
import tensorflow as tf

from hap.models import transformed, training


def test_auc_matches_pair_counting_with_ties():
    pos = np.array([0.9, 0.5, 0.5])
    neg = np.array([0.5, 0.1])
    # pairs: (0.9>0.5, 0.9>0.1, 0.5=0.5 half, 0.5>0.1, 0.5=0.5 half, 0.5>0.1) = 5 / 6
    assert training.auc(pos, neg) == pytest.approx(5 / 6)
    assert training.auc(np.array([1.0]), np.array([2.0, 3.0])) == 0.0
    assert np.isnan(training.auc(np.array([]), neg))


def test_per_source_auc_contrasts_positives_with_each_source():
    g = transformed.GROUP_INDEX
    groups = np.array([g["EP"], g["EP"], g["EN"], g["RN"], g["PRN"], g["GN"]])
    scores = np.array([0.8, 0.4, 0.6, 0.3, 0.1, 0.9])
    result = training.per_source_auc(scores, groups)
    assert result["auc_EP_vs_EN"] == pytest.approx(0.5)
    assert result["auc_EP_vs_RN"] == 1.0 and result["auc_EP_vs_PRN"] == 1.0
    assert result["auc_EP_vs_GN"] == 0.0
    assert result["auc_mean"] == pytest.approx(0.625)


class _RegularisedScorer(tf.keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = tf.keras.layers.Dense(1, use_bias=False, kernel_initializer="ones",
                                           kernel_regularizer=tf.keras.regularizers.L2(0.5))

    def call(self, features, training=False):
        return tf.squeeze(self.dense(features["x"][:, None]), -1)


def test_training_steps_add_the_scorers_regularisation_losses():
    """A loss with no gradient leaves only the regulariser: L2(0.5) at w = 1 is 0.5 w^2 = 0.5, its
    gradient w = 1, so one SGD(0.1) step moves w to 0.9 (a dropped self.losses leaves it at 1)."""
    model = training.RoutedTrainer(_RegularisedScorer(),
                                   lambda logits, *args, **kwargs: {"loss": 0.0 * tf.reduce_sum(logits)})
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1))
    features = {"x": [1.0, 2.0], transformed.LABEL: [1.0, 0.0], transformed.SAMPLE_GROUP: [0, 1],
                transformed.REQUEST_KEY: [b"r", b"r"]}
    logs = model.fit(tf.data.Dataset.from_tensors(features), epochs=1, verbose=0).history
    assert logs["regularization"] == [pytest.approx(0.5)]
    assert model.scorer.dense.kernel.numpy().item() == pytest.approx(0.9)
