"""`lightmoe export`: a bundle leaves lightmoe in the formats serving engines load (HF checkpoint, GGUF) or as
placement rules for them (llama.cpp -ot, a vLLM expert list)."""
