"""The paper's experiments: ELU against ReLU, leaky ReLU and SReLU, as reports with plots.

`elunet experiment activations` trains one architecture with each activation
over several seeds (every activation of a seed starts from the same weights);
`elunet experiment learning-behaviour` is the paper's MNIST MLP figure.
See README.md, section "Experiments".
"""
