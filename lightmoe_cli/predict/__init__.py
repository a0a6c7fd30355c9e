"""Expert-activation prediction (MoE-Beyond): learn from routing traces which experts the next layer will pick."""
