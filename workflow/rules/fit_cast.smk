# Stage 3: cast matrices (Din et al.): least-squares maps from each configured layer to the top
# layer, fitted after head training and saved into the checkpoint at results/<model>/cast.
