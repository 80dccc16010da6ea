"""Data: the embedded offline corpus (TFDS), local files, prepared datasets and their
mixtures, tokenizers, and the grain pipeline."""
from jaxlab.data.corpus import JaxlabCorpus
from jaxlab.data.lanes import LaneIterator, make_lane_iterator, uses_lanes
from jaxlab.data.pipeline import (DataIterator, eval_batches, eval_cost_note, eval_sets,
                                  make_train_iterator)
from jaxlab.data.tokenizers import (ByteTokenizer, HFTokenizer, SentencePieceTokenizer,
                                    make_tokenizer, train_sentencepiece)

__all__ = ['ByteTokenizer', 'DataIterator', 'HFTokenizer', 'JaxlabCorpus',
           'LaneIterator', 'SentencePieceTokenizer', 'eval_batches', 'eval_cost_note', 'eval_sets',
           'make_lane_iterator', 'make_tokenizer', 'make_train_iterator', 'train_sentencepiece',
           'uses_lanes']
