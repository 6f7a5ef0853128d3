"""Operations: health of the service and of what it depends on."""
