module neuronetz/godecode

go 1.19
