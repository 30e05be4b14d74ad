"""The parts the F-CAM family (F-CAM, TCAM, CoLo-CAM) shares: a frozen classifier's CAMs kept
per training frame, pixel pseudo-labels sampled from them, the loss terms, the decoder stage
and the method that composes them. Each plugin (plugins/fcam, plugins/tcam, plugins/colocam)
is a configuration of these parts plus what is its own."""
